package envoymatch

import (
	"errors"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

var (
	percentFields        = KnownFields(&typev3.FractionalPercent{}, "numerator", "denominator")
	runtimePercentFields = KnownFields(&corev3.RuntimeFractionalPercent{}, "default_value", "runtime_key")
)

// Fraction is a FractionalPercent compiled: a share Num/Den of the
// requests, Num capped at Den as Envoy does.
type Fraction struct{ Num, Den uint64 }

// CompileFraction compiles a FractionalPercent; nil is def.
func CompileFraction(p *typev3.FractionalPercent, def Fraction) (Fraction, error) {
	if p == nil {
		return def, nil
	}
	if err := percentFields.Check(p); err != nil {
		return Fraction{}, err
	}
	var den uint64
	switch p.GetDenominator() {
	case typev3.FractionalPercent_HUNDRED:
		den = 100
	case typev3.FractionalPercent_TEN_THOUSAND:
		den = 10_000
	case typev3.FractionalPercent_MILLION:
		den = 1_000_000
	default:
		return Fraction{}, At("denominator", fmt.Errorf("unknown denominator %d", p.GetDenominator()))
	}
	return Fraction{min(uint64(p.GetNumerator()), den), den}, nil
}

// CompileRuntimeFraction compiles a RuntimeFractionalPercent as its
// default_value, which Envoy requires. Sluice has no runtime: runtime_key is accepted and changes nothing, as in
// an Envoy whose runtime lacks the key.
func CompileRuntimeFraction(p *corev3.RuntimeFractionalPercent) (Fraction, error) {
	if err := runtimePercentFields.Check(p); err != nil {
		return Fraction{}, err
	}
	if p.GetDefaultValue() == nil {
		return Fraction{}, At("default_value", errors.New("a value is required"))
	}
	f, err := CompileFraction(p.GetDefaultValue(), Fraction{})
	return f, At("default_value", err)
}

// Hit draws whether a request is in the share; rand returns a uniform
// number in [0, n). It draws nothing for 0% and 100%.
func (f Fraction) Hit(rand func(n uint64) uint64) bool {
	if f.Num == 0 {
		return false
	}
	if f.Num >= f.Den {
		return true
	}
	return rand(f.Den) < f.Num
}
