package cli

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/pflag"
)

// outputFlag is the -o of a verb that can print for machines: "" for
// people, or "json" (stable JSON on stdout, chatter only on stderr).
type outputFlag string

func (o *outputFlag) add(f *pflag.FlagSet) {
	f.StringVarP((*string)(o), "output", "o", "", "output format: json")
}

// check refuses any other format before the verb does anything.
func (o outputFlag) check() error {
	if o != "" && o != "json" {
		return fmt.Errorf("unknown output format %q: use -o json", string(o))
	}
	return nil
}

func (o outputFlag) json() bool { return o == "json" }

// writeJSON writes v as every -o json does: indented, one document.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
