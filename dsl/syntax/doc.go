// Package syntax is the front half of the Sluice rule language (*.sluice
// files): lexer, parser, syntax tree, diagnostics, formatter and imports.
// It checks the shape of a file; names, types and CEL are checked by the
// compiler (package dsl/compile), which walks the tree built here.
//
// # Entry points
//
//	f, err := syntax.Parse(path, src)             // one file; err is a Diagnostics
//	prog, err := syntax.ParseFiles(root, os.ReadFile) // a file and its imports
//	out := syntax.Format(f)                       // the canonical layout
//
// # Lexical structure
//
// Source is UTF-8. Positions (Pos) are 1-based lines and 1-based byte
// columns, with a 0-based byte offset. Blanks are spaces, tabs and
// carriage returns; a newline or `;` ends a statement, and so does the
// `}` that closes the enclosing block. A comment runs from `#` to the end
// of the line; comments are kept in the tree for the formatter.
//
//	ident    = letter { letter | digit | "_" | "-" } .   // letter includes "_"
//	number   = digits [ "." digits ] .                    // 90, 0.5
//	duration = number unit { number unit } .              // 1s, 250ms, 1m30s (Go's time.ParseDuration)
//	unit     = "ns" | "us" | "µs" | "ms" | "s" | "m" | "h" .
//	string   = `"` { char | escape } `"`                 // Go escapes, one line
//	         | "`" { any char but "`" } "`" .             // raw, may span lines
//	address  = HOST ":" PORT | "[" IPV6 "]" ":" PORT .    // read only where an address is expected
//
// Keywords are not reserved: `route proxy` names a route "proxy".
//
// # Expressions
//
// EXPR is CEL, not parsed here: it is the raw source text, kept with its
// position (Expr.Text, Expr.Pos; Expr.PosAt and Expr.PosAtLineCol map a
// position inside it back to the file). The lexer finds its end while
// skipping CEL strings ('...', "...", triple-quoted, r/b prefixes) and
// tracking (), [] and {}:
//
//   - after `when`: at the `{` that opens the block, at the first `{`
//     outside brackets and strings. A CEL map literal in a condition must
//     therefore be inside parentheses: `when ({"a": 1}[k] == 1) {`.
//   - after `=`, `respond CODE`, `redirect CODE`, `rewrite path|host`
//     and `by`: at the end of the statement (a newline, `;` or an
//     unmatched `}`).
//   - in `ring_hash(EXPR)` and `maglev(EXPR)`: at the matching `)`.
//
// Everywhere, `#` and `;` outside strings end an expression (CEL uses
// neither), and a newline ends it only outside brackets: to break a long
// condition across lines, wrap it in parentheses. An unclosed bracket is
// reported at the bracket.
//
// # Grammar
//
//	File        = { Decl Term } .
//	Term        = newline | ";" .                          // or before a "}"
//	Decl        = "admin" address
//	            | "import" string
//	            | "upstream" ident "{" { UpstreamStmt Term } "}"
//	            | "listener" ident address "{" { ListenerItem Term } "}"
//	            | "test" string "{" { TestStmt Term } "}" .
//
//	UpstreamStmt = "endpoint" address [ "weight" number ]
//	            | "lb" ( "round_robin" | "least_request" | "random"
//	                   | "ring_hash" "(" EXPR ")" | "maglev" "(" EXPR ")" )
//	            | "connect_timeout" duration
//	            | "protocol" ( "http1" | "http2" | "auto" | "downstream" )
//	            | "tls" "{" { UpstreamTLS Term } "}"
//	            | HTTP2
//	            | "health_check" "http" string [ "interval" duration ] .
//	UpstreamTLS = "sni" string | "ca" string | Cert | "san" string | TLSCommon .
//
//	ListenerItem = "protocol" ( "http1" | "http2" | "auto" )
//	            | "tls" "{" { ListenerTLS Term } "}"
//	            | HTTP2
//	            | "access_log" string [ "format" string ]
//	            | "on" ( "request" | "response" ) [ "when" EXPR ] "{" { Action Term } "}"
//	            | "route" ident [ "when" EXPR ] "{" { Action Term } "}"
//	            | Lua | Wasm .
//	Lua         = "lua" string .                           // "file" or `inline code`
//	Wasm        = "wasm" string { "config" string | "root_id" string } .
//	ListenerTLS = Cert | "client_ca" string | "require_client_cert" | TLSCommon .
//	Cert        = "cert" string "key" string .             // PEM files, relative to the file
//	TLSCommon   = "alpn" string | "cipher_suites" string   // comma-separated lists
//	            | "min_version" string | "max_version" string .
//	HTTP2       = "http2" "{" { HTTP2Stmt Term } "}" .
//	HTTP2Stmt   = "max_concurrent_streams" number
//	            | "initial_stream_window" number | "initial_connection_window" number
//	            | "keepalive" duration [ "timeout" duration ] .
//
//	Action      = ( "set" | "add" ) Header "=" EXPR
//	            | "remove" Header
//	            | "rewrite" ( "path" | "host" ) EXPR
//	            | "ratelimit" number "per" duration [ "by" EXPR ]
//	            | "delay" duration [ "percent" number ]
//	            | "abort" number [ "percent" number ]
//	            | "respond" number [ EXPR ]
//	            | "redirect" number EXPR
//	            | "deny" [ number ]
//	            | "proxy" ( ident | "split" "(" Split { "," Split } [ "," ] ")" ) { ProxyOption }
//	            | Lua | Wasm .
//	Header      = ( "request" | "response" ) "." "headers" "[" string "]" .
//	Split       = ident ":" number .                       // may span lines; no comments inside
//	ProxyOption = "timeout" duration | "retries" number | "retry_on" string
//	            | "mirror" ident [ "percent" number ] .
//
//	TestStmt    = "request" ident string { "header" string string | "source" string | "body" string }
//	            | "expect" ( "route" ident | "upstream" ident
//	                       | "respond" number [ string ] | "header" string string ) .
//
// Options ({ ... } above) may come in any order, each at most once except
// a test request's `header`. The parser also checks what needs no context:
// status codes are integers from 100 to 599 (redirect: 301, 302, 303, 307
// or 308), weights and counts are integers, percentages are from 0 to
// 100, ports from 1 to 65535, HTTP/2 windows from 65535 to 2^31-1, and
// that a tls block holds only the statements of its context (a listener's
// or an upstream's). Which actions are allowed where, terminal
// actions, names and CEL types are the compiler's business.
//
// # Diagnostics
//
// Errors are *Diagnostic values (file:line:col, message, hint, source
// line), collected in a Diagnostics, which renders each with the source
// line and a caret. The parser recovers at statement boundaries, so one
// run reports many errors (at most MaxErrors).
//
// # Formatting
//
// Format prints the canonical layout: two-space indentation, one statement
// per line, options in grammar order, a blank line around top-level
// blocks, other blank lines kept (at most one in a row), comments kept in
// place, trailing comments of adjacent lines aligned, expressions and
// strings exactly as written apart from surrounding blanks.
package syntax
