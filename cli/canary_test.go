package cli

import "testing"

func TestParseRate(t *testing.T) {
	for in, want := range map[string]float64{"1%": 0.01, "0.5%": 0.005, "0.02": 0.02, "100%": 1} {
		if got, err := parseRate(in); err != nil || got != want {
			t.Errorf("parseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x%", "150%", "-1%"} {
		if _, err := parseRate(bad); err == nil {
			t.Errorf("parseRate(%q) took it", bad)
		}
	}
}
