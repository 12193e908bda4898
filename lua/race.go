//go:build race

package lua

// raceScale stretches the default time budget in race-detector builds,
// whose scripts run several times slower, and the memory budget with it
// (the allocation counter is process-wide, so a longer window sees more
// of other goroutines' allocations); a build for production has no race
// detector and keeps the documented budgets.
const raceScale = 10
