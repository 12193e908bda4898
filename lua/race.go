//go:build race

package lua

// raceScale stretches the default time budget in race-detector builds,
// whose scripts run several times slower; a build for production has no
// race detector and keeps the documented budget.
const raceScale = 10
