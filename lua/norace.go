//go:build !race

package lua

const raceScale = 1
