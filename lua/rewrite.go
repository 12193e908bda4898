package lua

import "github.com/yuin/gopher-lua/ast"

// gopher-lua calls a generic for's iterator through a nested Go call, and
// a coroutine cannot yield from there; Envoy scripts do exactly that with
// `for chunk in handle:bodyChunks() do`. rewriteGenericFor turns every
// generic for into the while loop the Lua 5.1 manual (§2.4.5) defines it
// as, where the iterator call is an ordinary call that may yield:
//
//	do
//	  local f, s, var = explist
//	  while true do
//	    local v1, ..., vn = f(s, var)
//	    if v1 == nil then break end
//	    var = v1
//	    do block end
//	  end
//	end
//
// The hidden names contain a space, so no script can refer to them.
func rewriteGenericFor(stmts []ast.Stmt) {
	for i, s := range stmts {
		stmts[i] = rewriteStmt(s)
	}
}

func rewriteStmt(s ast.Stmt) ast.Stmt {
	switch s := s.(type) {
	case *ast.AssignStmt:
		rewriteExprs(s.Lhs)
		rewriteExprs(s.Rhs)
	case *ast.LocalAssignStmt:
		rewriteExprs(s.Exprs)
	case *ast.FuncCallStmt:
		rewriteExpr(s.Expr)
	case *ast.DoBlockStmt:
		rewriteGenericFor(s.Stmts)
	case *ast.WhileStmt:
		rewriteExpr(s.Condition)
		rewriteGenericFor(s.Stmts)
	case *ast.RepeatStmt:
		rewriteExpr(s.Condition)
		rewriteGenericFor(s.Stmts)
	case *ast.IfStmt:
		rewriteExpr(s.Condition)
		rewriteGenericFor(s.Then)
		rewriteGenericFor(s.Else)
	case *ast.NumberForStmt:
		rewriteExpr(s.Init)
		rewriteExpr(s.Limit)
		rewriteExpr(s.Step)
		rewriteGenericFor(s.Stmts)
	case *ast.FuncDefStmt:
		rewriteExpr(s.Func)
	case *ast.ReturnStmt:
		rewriteExprs(s.Exprs)
	case *ast.GenericForStmt:
		rewriteExprs(s.Exprs)
		rewriteGenericFor(s.Stmts)
		return lowerGenericFor(s)
	}
	return s
}

func rewriteExprs(es []ast.Expr) {
	for _, e := range es {
		rewriteExpr(e)
	}
}

func rewriteExpr(e ast.Expr) {
	switch e := e.(type) {
	case *ast.FunctionExpr:
		rewriteGenericFor(e.Stmts)
	case *ast.AttrGetExpr:
		rewriteExpr(e.Object)
		rewriteExpr(e.Key)
	case *ast.TableExpr:
		for _, f := range e.Fields {
			rewriteExpr(f.Key)
			rewriteExpr(f.Value)
		}
	case *ast.FuncCallExpr:
		rewriteExpr(e.Func)
		rewriteExpr(e.Receiver)
		rewriteExprs(e.Args)
	case *ast.LogicalOpExpr:
		rewriteExpr(e.Lhs)
		rewriteExpr(e.Rhs)
	case *ast.RelationalOpExpr:
		rewriteExpr(e.Lhs)
		rewriteExpr(e.Rhs)
	case *ast.StringConcatOpExpr:
		rewriteExpr(e.Lhs)
		rewriteExpr(e.Rhs)
	case *ast.ArithmeticOpExpr:
		rewriteExpr(e.Lhs)
		rewriteExpr(e.Rhs)
	case *ast.UnaryMinusOpExpr:
		rewriteExpr(e.Expr)
	case *ast.UnaryNotOpExpr:
		rewriteExpr(e.Expr)
	case *ast.UnaryLenOpExpr:
		rewriteExpr(e.Expr)
	}
}

const (
	forFunc  = "(for f)"
	forState = "(for s)"
	forVar   = "(for var)"
)

func lowerGenericFor(s *ast.GenericForStmt) ast.Stmt {
	line, last := s.Line(), s.LastLine()
	at := func(n ast.PositionHolder) {
		n.SetLine(line)
		n.SetLastLine(last)
	}
	ident := func(name string) *ast.IdentExpr {
		id := &ast.IdentExpr{Value: name}
		at(id)
		return id
	}
	head := &ast.LocalAssignStmt{Names: []string{forFunc, forState, forVar}, Exprs: s.Exprs}
	at(head)
	call := &ast.FuncCallExpr{Func: ident(forFunc), Args: []ast.Expr{ident(forState), ident(forVar)}}
	at(call)
	vars := &ast.LocalAssignStmt{Names: s.Names, Exprs: []ast.Expr{call}}
	at(vars)
	nilExpr := &ast.NilExpr{}
	at(nilExpr)
	isNil := &ast.RelationalOpExpr{Operator: "==", Lhs: ident(s.Names[0]), Rhs: nilExpr}
	at(isNil)
	brk := &ast.BreakStmt{}
	at(brk)
	stop := &ast.IfStmt{Condition: isNil, Then: []ast.Stmt{brk}}
	at(stop)
	step := &ast.AssignStmt{Lhs: []ast.Expr{ident(forVar)}, Rhs: []ast.Expr{ident(s.Names[0])}}
	at(step)
	body := &ast.DoBlockStmt{Stmts: s.Stmts}
	at(body)
	cond := &ast.TrueExpr{}
	at(cond)
	loop := &ast.WhileStmt{Condition: cond, Stmts: []ast.Stmt{vars, stop, step, body}}
	at(loop)
	block := &ast.DoBlockStmt{Stmts: []ast.Stmt{head, loop}}
	at(block)
	return block
}
