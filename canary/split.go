package canary

import (
	"encoding/json"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// An HTTPRoute carries a split as edits tunnel can always take back:
//
//   - a weight: beside each backendRef to the stable Service, one to the
//     canary, the two weights in the split's proportion (the stable's own
//     weight before the canary is kept in an annotation);
//   - a match: after the route's rules, a copy of each rule that sends to
//     the stable Service, with the match AND-ed into each of its matches
//     and the canary in the stable's place. One more header to match
//     ranks a copy above its original under the Gateway API's precedence
//     (and Traefik's priorities), wherever it stands. Standing last, it
//     loses the ties that list order breaks, as its original would have;
//     a tie that the route's age breaks, or a rule elsewhere with exactly
//     one more header than the original, can still take a matching
//     request the original would have lost. Traefik numbers a route's
//     rules from the end, so the copies raise the route's other rules by
//     their count against rules of other routes with equal matches.
//
// Every split is made from the route as it was (pristineRules), so any
// split follows any other and nothing else in the route moves: its other
// rules, matches, filters and timeouts stay byte for byte.

// splitRoute changes obj to carry s; errUnchanged when it already does.
func splitRoute(obj *unstructured.Unstructured, b Backends, name string, s Split) error {
	stable := stableRefs(obj.Object, b)
	if len(stable) == 0 {
		return fmt.Errorf("httproute %s/%s no longer sends traffic to service %s", b.Namespace, name, b.Stable)
	}
	ann := obj.GetAnnotations()
	if _, saved := ann[weightsAnnotation]; !saved {
		if s.Weight == 0 && s.Match == nil && !hasCanary(obj.Object, b) {
			return errUnchanged
		}
		// The stable backends' own weights, before the canary's first edit.
		rules, _, _ := unstructured.NestedSlice(obj.Object, "spec", "rules")
		var orig []*int64
		for _, at := range stable {
			refs, _, _ := unstructured.NestedSlice(asMap(rules[at.rule]), "backendRefs")
			if w, ok, _ := unstructured.NestedInt64(asMap(refs[at.ref]), "weight"); ok {
				orig = append(orig, &w)
			} else {
				orig = append(orig, nil)
			}
		}
		data, _ := json.Marshal(orig)
		if ann == nil {
			ann = map[string]string{}
		}
		ann[weightsAnnotation] = string(data)
		obj.SetAnnotations(ann)
	}
	rules, err := pristineRules(obj, b, name, true)
	if err != nil {
		return err
	}
	var copies []any
	if s.Match != nil {
		if copies, err = matchRules(rules, b, name, s.Match); err != nil {
			return err
		}
	}
	if s.Weight > 0 {
		for _, rule := range rules {
			weighRule(asMap(rule), b, s.Weight)
		}
	}
	return unstructured.SetNestedSlice(obj.Object, append(rules, copies...), "spec", "rules")
}

// pristineRules are obj's rules without the canary: its match rules gone,
// its backendRefs gone, the stable's weights as they were. strict refuses
// an annotation that no longer fits the rules; otherwise the stable's
// weight goes back to the default where the canary stood beside it.
func pristineRules(obj *unstructured.Unstructured, b Backends, name string, strict bool) ([]any, error) {
	var orig []*int64
	saved, ok := obj.GetAnnotations()[weightsAnnotation]
	if ok {
		if err := json.Unmarshal([]byte(saved), &orig); err != nil || len(orig) != len(stableRefs(obj.Object, b)) {
			if strict {
				return nil, fmt.Errorf("httproute %s/%s: annotation %s does not match its rules; remove the canary's backends and rules by hand", b.Namespace, name, weightsAnnotation)
			}
			ok = false
		}
	}
	rules, _, _ := unstructured.NestedSlice(obj.Object, "spec", "rules")
	var out []any
	k := 0
	for _, r := range rules {
		rule := asMap(r)
		refs, _, _ := unstructured.NestedSlice(rule, "backendRefs")
		if isMatchRule(refs, b) {
			continue
		}
		hadCanary := false
		kept := []any{}
		for _, ref := range refs {
			m := asMap(ref)
			if refersTo(m, b.Namespace, b.Canary) {
				hadCanary = true
				continue
			}
			kept = append(kept, ref)
		}
		for _, ref := range kept {
			m := asMap(ref)
			if !refersTo(m, b.Namespace, b.Stable) {
				continue
			}
			switch {
			case ok && orig[k] != nil:
				m["weight"] = *orig[k]
			case ok || hadCanary:
				delete(m, "weight")
			}
			k++
		}
		if len(refs) > 0 {
			rule["backendRefs"] = kept
		}
		out = append(out, rule)
	}
	return out, nil
}

// isMatchRule says whether a rule is a dark launch's: it sends to the
// canary and not to the stable Service (the canary's Service is tunnel's
// own, so no rule of the user's names it).
func isMatchRule(refs []any, b Backends) bool {
	canary := false
	for _, ref := range refs {
		m := asMap(ref)
		if refersTo(m, b.Namespace, b.Stable) {
			return false
		}
		canary = canary || refersTo(m, b.Namespace, b.Canary)
	}
	return canary
}

// weighRule puts the canary beside each of the rule's stable backendRefs
// with percent of its weight.
func weighRule(rule map[string]any, b Backends, percent int) {
	refs, _, _ := unstructured.NestedSlice(rule, "backendRefs")
	var added []any
	for _, ref := range refs {
		m := asMap(ref)
		if !refersTo(m, b.Namespace, b.Stable) {
			continue
		}
		base, ok, _ := unstructured.NestedInt64(m, "weight")
		if !ok {
			base = 1
		}
		c := runtimeCopy(m)
		c["name"] = b.Canary
		c["weight"] = base * int64(percent)
		m["weight"] = base * int64(100-percent)
		added = append(added, c)
	}
	if len(added) > 0 {
		rule["backendRefs"] = append(refs, added...)
	}
}

// matchRules copies each rule that sends to the stable Service into one
// that sends the requests m picks to the canary instead.
func matchRules(rules []any, b Backends, route string, m *Match) ([]any, error) {
	header, value, regex := m.Header()
	hm := map[string]any{"name": header, "value": value}
	if regex {
		hm["type"] = "RegularExpression"
	}
	var out []any
	for i, r := range rules {
		refs, _, _ := unstructured.NestedSlice(asMap(r), "backendRefs")
		sends := false
		for _, ref := range refs {
			sends = sends || refersTo(asMap(ref), b.Namespace, b.Stable)
		}
		if !sends {
			continue
		}
		rule := runtimeCopy(asMap(r))
		if name, _ := rule["name"].(string); name != "" {
			// A policy attached to the rule by name (sectionName) would
			// not cover its copy: the match would step around it.
			return nil, fmt.Errorf("rule %d of httproute %s/%s is named %s, and what is attached to it by name would not cover the copy that picks %s; a dark launch needs the route's rules unnamed",
				i+1, b.Namespace, route, name, m.Describe())
		}
		refs, _, _ = unstructured.NestedSlice(rule, "backendRefs")
		for _, ref := range refs {
			if ref := asMap(ref); refersTo(ref, b.Namespace, b.Stable) {
				ref["name"] = b.Canary
			}
		}
		rule["backendRefs"] = refs
		matches, _, _ := unstructured.NestedSlice(rule, "matches")
		if len(matches) == 0 {
			matches = []any{map[string]any{}}
		}
		for _, mt := range matches {
			mt := asMap(mt)
			headers, _, _ := unstructured.NestedSlice(mt, "headers")
			for _, h := range headers {
				if name, _ := asMap(h)["name"].(string); strings.EqualFold(name, header) {
					// The Gateway API reads only the first of two matches
					// on one header: the copy would take all the rule's traffic.
					return nil, fmt.Errorf("rule %d of httproute %s/%s already matches header %s, so it cannot also pick %s", i+1, b.Namespace, route, name, m.Describe())
				}
			}
			mt["headers"] = append(headers, runtimeCopy(hm))
		}
		rule["matches"] = matches
		out = append(out, rule)
	}
	return out, nil
}

// DescribeSplit is a split in words: "10% of traffic and requests with header x-beta=1".
func DescribeSplit(s Split) string {
	switch {
	case s.Match == nil:
		return fmt.Sprintf("%d%% of traffic", s.Weight)
	case s.Weight == 0:
		return s.Match.Describe()
	}
	return fmt.Sprintf("%d%% of traffic and %s", s.Weight, s.Match.Describe())
}
