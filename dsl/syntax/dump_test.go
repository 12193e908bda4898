package syntax

import (
	"reflect"
	"strings"
)

// dump renders a syntax tree compactly and without positions or blank
// lines, for comparing trees: nil, zero and empty fields are left out.
func dump(n any) string {
	var b strings.Builder
	dumpValue(&b, reflect.ValueOf(n))
	return b.String()
}

var posType = reflect.TypeFor[Pos]()

func dumpValue(b *strings.Builder, v reflect.Value) {
	if !v.IsValid() {
		b.WriteString("nil")
		return
	}
	if v.Kind() == reflect.Interface || v.Kind() == reflect.Pointer {
		if v.IsNil() {
			b.WriteString("nil")
			return
		}
		v = v.Elem()
		if v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
			dumpValue(b, v)
			return
		}
	}
	switch x := v.Interface().(type) {
	case Ident:
		b.WriteString(x.Name)
		return
	case String:
		b.WriteString(x.Raw)
		return
	case Number:
		b.WriteString(x.Text)
		return
	case Duration:
		b.WriteString(x.Text)
		return
	case Addr:
		b.WriteString(x.Text)
		return
	case Expr:
		b.WriteString("<" + x.Text + ">")
		return
	case Comment:
		b.WriteString(x.Text)
		return
	case HeaderOp:
		b.WriteString(x.String())
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		t := v.Type()
		if t.Name() != "StmtInfo" && t.Name() != "Block" {
			b.WriteString(t.Name())
		}
		b.WriteString("{")
		n := 0
		for i := range t.NumField() {
			f := t.Field(i)
			fv := v.Field(i)
			if !f.IsExported() || f.Type == posType || f.Name == "BlankBefore" ||
				t.Name() == "File" && (f.Name == "Src" || f.Name == "Path") ||
				fv.IsZero() && f.Type != reflect.TypeFor[HeaderOp]() {
				continue
			}
			s := dumpString(fv)
			if s == "{}" || s == "[]" {
				continue
			}
			if n > 0 {
				b.WriteString(" ")
			}
			n++
			if f.Anonymous {
				b.WriteString(strings.TrimSuffix(strings.TrimPrefix(s, "{"), "}"))
			} else {
				b.WriteString(f.Name + ":" + s)
			}
		}
		b.WriteString("}")
	case reflect.Slice:
		b.WriteString("[")
		for i := range v.Len() {
			if i > 0 {
				b.WriteString(" ")
			}
			dumpValue(b, v.Index(i))
		}
		b.WriteString("]")
	default:
		b.WriteString(strings.TrimSpace(reflect.ValueOf(v.Interface()).String()))
	}
}

func dumpString(v reflect.Value) string {
	var b strings.Builder
	dumpValue(&b, v)
	return b.String()
}
