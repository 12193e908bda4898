//go:build !linux

package upstream

import "testing"

func fullBacklogListener(t *testing.T) (string, bool) { return "", false }
