package suggest

import "testing"

func TestClosest(t *testing.T) {
	words := []string{"endpoint", "lb", "connect_timeout", "protocol"}
	for _, tc := range []struct{ in, want string }{
		{"endpiont", "endpoint"}, {"protocl", "protocol"}, {"lb", "lb"}, {"xy", ""}, {"weight", ""},
	} {
		if got := Closest(tc.in, words); got != tc.want {
			t.Errorf("Closest(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if d := Distance("kitten", "sitting"); d != 3 {
		t.Errorf("Distance = %d, want 3", d)
	}
}
