package xds

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/sluice-proxy/sluice/engine/config"
)

// LoadBootstrapFile reads an Envoy v3 bootstrap file (YAML or JSON) and
// translates it. See LoadBootstrap.
func LoadBootstrapFile(path string) (*config.Snapshot, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, prefixed(err)
	}
	return LoadBootstrap(data, path)
}

// LoadBootstrap decodes an Envoy v3 bootstrap (YAML or JSON) and translates
// it into a snapshot. name is used in errors and as the snapshot's Source;
// the Version is a hash of data. Errors look like
// "xds: NAME: static_resources.listeners[0]: unknown field \"nme\"".
func LoadBootstrap(data []byte, name string) (*config.Snapshot, error) {
	s, _, err := LoadBootstrapWith(data, name, DecodeOptions{}, nil)
	return s, err
}

// LoadBootstrapWith is LoadBootstrap with decode options and an overlay (a
// bootstrap in YAML or JSON, Envoy's --config-yaml) merged over data as
// Envoy merges it: a protobuf merge, scalars replaced and lists appended.
// It also returns the merged bootstrap, for the xDS client and
// /config_dump.
func LoadBootstrapWith(data []byte, name string, opts DecodeOptions, overlay []byte) (*config.Snapshot, *bootstrapv3.Bootstrap, error) {
	b, err := DecodeBootstrapWith(data, name, opts)
	if err != nil {
		return nil, nil, err
	}
	h := sha256.New()
	h.Write(data)
	if len(overlay) > 0 {
		over, err := DecodeBootstrapWith(overlay, "--config-yaml", opts)
		if err != nil {
			return nil, nil, err
		}
		proto.Merge(b, over)
		h.Write(overlay)
	}
	s, err := translate(b)
	if err != nil {
		return nil, nil, fmt.Errorf("xds: %s: %w", name, err)
	}
	s.Version = hex.EncodeToString(h.Sum(nil)[:8])
	s.Source = name
	return s, b, nil
}

// DecodeBootstrap decodes an Envoy v3 bootstrap (YAML or JSON) strictly:
// unknown fields, unknown Any types and malformed values are errors naming
// the field path (and, for JSON input, line and column). It does not run
// validation rules; Translate does.
func DecodeBootstrap(data []byte, name string) (*bootstrapv3.Bootstrap, error) {
	return DecodeBootstrapWith(data, name, DecodeOptions{})
}

// DecodeOptions loosen DecodeBootstrap.
type DecodeOptions struct {
	// AllowUnknownFields ignores fields this Envoy API version does not
	// know (Envoy's --allow-unknown-static-fields) instead of failing.
	AllowUnknownFields bool
}

// DecodeBootstrapWith is DecodeBootstrap with options.
func DecodeBootstrapWith(data []byte, name string, opts DecodeOptions) (*bootstrapv3.Bootstrap, error) {
	js := data
	isJSON := json.Valid(data)
	if !isJSON {
		var err error
		if js, err = yaml.YAMLToJSON(data); err != nil {
			return nil, fmt.Errorf("xds: %s: %w", name, err)
		}
	}
	if t := bytes.TrimSpace(js); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return nil, fmt.Errorf("xds: %s: empty bootstrap", name)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: opts.AllowUnknownFields}).Unmarshal(js, b); err != nil {
		return nil, decodeError(name, js, isJSON, err)
	}
	return b, nil
}

// protojsonPos finds the "(line L:C)" position in a protojson error.
var protojsonPos = regexp.MustCompile(`\s*\(line (\d+):(\d+)\)`)

// protojsonUnresolved is protojson's message for an Any whose type it cannot
// resolve.
var protojsonUnresolved = regexp.MustCompile(`^unable to resolve "?([^"]*)"?: .*$`)

// decodeError rewrites a protojson error as "xds: NAME[:L:C]: PATH: MSG"
// where PATH is the field path in the document, which protojson does not
// give.
func decodeError(name string, js []byte, isJSON bool, err error) error {
	msg := err.Error()
	// protojson randomizes the space after "proto:" to discourage parsing.
	msg = strings.TrimLeft(strings.TrimPrefix(msg, "proto:"), " \u00a0")
	loc := protojsonPos.FindStringSubmatchIndex(msg)
	if loc == nil {
		return &rewrittenError{msg: fmt.Sprintf("xds: %s: %s", name, msg), err: err}
	}
	line, _ := strconv.Atoi(msg[loc[2]:loc[3]])
	col, _ := strconv.Atoi(msg[loc[4]:loc[5]])
	msg = strings.TrimLeft(msg[:loc[0]]+msg[loc[1]:], ": ")
	if msg == "" {
		msg = "invalid document"
	}
	path := jsonPathAt(js, byteOffset(js, line, col))
	switch {
	case strings.HasPrefix(msg, "unknown field"):
		// The message names the field; the path names its parent.
		path = path[:max(len(path)-1, 0)]
	case protojsonUnresolved.MatchString(msg):
		msg = protojsonUnresolved.ReplaceAllString(msg, `unknown Any type "$1": not linked into sluice`)
		if n := len(path); n > 0 && path[n-1] == ".@type" {
			path = path[:n-1]
		}
	}
	where := name
	if isJSON {
		where = fmt.Sprintf("%s:%d:%d", name, line, col)
	}
	if p := strings.TrimPrefix(strings.Join(path, ""), "."); p != "" {
		msg = p + ": " + msg
	}
	return &rewrittenError{msg: fmt.Sprintf("xds: %s: %s", where, msg), err: err}
}

// rewrittenError is a decoding error reworded with its location; the
// original error stays reachable through errors.Unwrap.
type rewrittenError struct {
	msg string
	err error
}

func (e *rewrittenError) Error() string { return e.msg }
func (e *rewrittenError) Unwrap() error { return e.err }

// byteOffset converts protojson's 1-based line and rune column into a byte
// offset in b.
func byteOffset(b []byte, line, col int) int {
	off := 0
	for l := 1; l < line; l++ {
		i := bytes.IndexByte(b[off:], '\n')
		if i < 0 {
			return len(b)
		}
		off += i + 1
	}
	for c := 1; c < col && off < len(b); c++ {
		_, n := utf8.DecodeRune(b[off:])
		off += n
	}
	return off
}

// jsonPathAt returns the path, as elements like ".key" and "[3]", of the
// JSON token that covers byte offset off.
func jsonPathAt(js []byte, off int) []string {
	type frame struct {
		array   bool
		index   int // array: elements completed so far
		key     string
		wantKey bool // object: the next token is a key
	}
	var stack []frame
	render := func() []string {
		var p []string
		for _, f := range stack {
			switch {
			case f.array:
				p = append(p, "["+strconv.Itoa(f.index)+"]")
			case !f.wantKey:
				p = append(p, "."+f.key)
			}
		}
		return p
	}
	// valueDone moves the enclosing container past a completed value.
	valueDone := func() {
		if n := len(stack); n > 0 {
			if stack[n-1].array {
				stack[n-1].index++
			} else {
				stack[n-1].wantKey = true
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err != nil {
			return render()
		}
		end := int(dec.InputOffset())
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				if end > off {
					return render()
				}
				stack = append(stack, frame{array: d == '[', wantKey: d == '{'})
			default:
				if end > off || len(stack) == 0 {
					return render()
				}
				stack = stack[:len(stack)-1]
				valueDone()
			}
			continue
		}
		if n := len(stack); n > 0 && !stack[n-1].array && stack[n-1].wantKey {
			s, _ := tok.(string)
			stack[n-1].key = s
			stack[n-1].wantKey = false
			if end > off {
				return render()
			}
			continue
		}
		if end > off {
			return render()
		}
		valueDone()
	}
}
