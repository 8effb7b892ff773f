"""Name resolution for TorchScript's serialized code, as ``torch.jit.load`` resolves it.

`CodeChecker` walks one parsed ``code/**/*.py`` file (see
`explain.loading.script_check` for the archive as a whole) and refuses, naming it, the
first thing outside what Glassbox runs:

- ``torch.name`` (and ``torch.autograd.name``) is ``aten::name``,
  ``ops.ns.name`` and ``torch.ops.ns.name`` are ``ns::name``: each must be on
  the shared allowlist (`explain.loading.op_allowlist`);
- ``value.name`` (a method or a property) is ``aten::name`` when torch has
  such an operator, so such a name must be allowed too; any other name is a
  module attribute or a method the archive defines; `DENIED_NAMES` never pass,
  nor does ``getattr(value, "name")`` with such a name;
- ``__torch__.x.y`` must be a class or function the archive defines
  (``__torch__.torch.classes`` are C++ objects and refused);
- a bare name is a parameter or local bound earlier in the function, or one of
  `ALLOWED_GLOBALS`; ``torch`` / ``ops`` are never values (no aliasing);
- only the statements and expressions TorchScript's printer emits; no
  decorators, nested functions, imports or comprehensions.

``__setstate__`` / ``__getstate__`` definitions are collected in
`CodeChecker.loader_hooks` for the caller to refuse after the operators.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from explain.errors import UnsafeFile
from explain.loading.op_allowlist import DENIED_NAMES, allowed_names, is_allowed, known_op_names

HINT = "Export it with torch.export (.pt2) or upload safetensors + a registered architecture."
#: an int8-quantised graph's operators (``quantized::*``) read packed weights through C++ classes no check
#: can see into, so they stay off the allowlist; what to load instead
QUANTIZED_HINT = ("int8-quantised operators (quantized::*) are not admitted: they read packed weights through C++ "
                  "classes Glassbox cannot check. Load the float model, or a copy cast to fp16/bf16, which loads "
                  "in every format.")
#: Names that resolve to a namespace of operators or classes, not a value.
ROOTS = frozenset(["torch", "ops", "__torch__", "CONSTANTS"])
#: Globals TorchScript code may use: types, special forms and harmless builtins.
ALLOWED_GLOBALS = frozenset(
    """Tensor List Dict Optional Tuple Union NoneType Final Device Any number int float bool str complex
    Module NamedTuple Enum ModuleInterface Interface annotate unchecked_cast uninitialized isinstance getattr
    hasattr range len tuple list dict min max abs all any sum divmod round zip enumerate sorted ord chr hex oct
    bin pow hash inf nan infj nanj AssertionError""".split()
)
#: Names a function may not bind: TorchScript resolves them specially.
RESERVED = ROOTS | frozenset(
    "fork awaitable print rpc_async rpc_sync rpc_remote annotate unchecked_cast uninitialized getattr hasattr "
    "isinstance inf nan infj nanj".split()
)
#: Tensor / device properties TorchScript reads without a call (all harmless).
PROPERTIES = frozenset(
    """dtype device grad data shape is_cuda is_cpu is_xla is_xpu is_sparse is_sparse_csr is_mkldnn is_mps is_mtia
    is_quantized is_vulkan is_ipu is_meta is_leaf is_nested requires_grad layout T H mT mH is_maia itemsize nbytes
    ndim name real imag retains_grad type index""".split()
)
CLASS_BASES = frozenset(["Module", "NamedTuple", "Enum", "ModuleInterface", "Interface"])
_STATEMENTS = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr, ast.Return, ast.If, ast.For, ast.While,
               ast.Break, ast.Continue, ast.Pass, ast.With, ast.Assert, ast.Delete)
_EXPRESSIONS = (ast.Call, ast.Attribute, ast.Name, ast.Constant, ast.Subscript, ast.Slice, ast.Tuple, ast.List,
                ast.Dict, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp)
_LEAVES = (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.keyword, ast.withitem)


class CodeChecker:
    """Checks one parsed code file; raises on the first refusal, except for operators that are merely
    not on the allowlist and an int8 graph's ``torch.classes.quantized`` classes: those are collected
    (``missing``: name -> its first node) so the caller refuses the archive once, naming every one
    (`refuse_missing`); denied names and other C++ classes still raise at once.

    Args:
        where: the file name for messages.
        defined: qualified names of every class and function the archive defines.
        members: names of the attributes and methods its classes declare.
    """

    def __init__(self, where: str, defined: frozenset[str], members: frozenset[str] = frozenset()):
        self.where = where
        self.defined = defined
        self.members = members
        self.loader_hooks: list[ast.FunctionDef] = []
        self.missing: dict[str, ast.AST] = {}

    def refuse(self, node: ast.AST, what: str, hint: str = HINT) -> None:
        """Raise `UnsafeFile` naming ``what`` and the file and line."""
        line = getattr(node, "lineno", "?")
        raise UnsafeFile(f"The TorchScript file {what} ({self.where}, line {line}); Glassbox does not load it.", hint)

    def check(self, tree: ast.Module) -> None:
        """Module level: only class and function definitions."""
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                self.check_class(node)
            elif isinstance(node, ast.FunctionDef):
                self.check_function(node)
            else:
                self.refuse(node, f"has a top-level {type(node).__name__} statement")

    def check_class(self, node: ast.ClassDef) -> None:
        """A class: known bases, attribute declarations and methods."""
        if node.decorator_list or node.keywords or len(node.bases) > 1:
            self.refuse(node, f"declares class {node.name} with decorators or keywords")
        for base in node.bases:
            if not (isinstance(base, ast.Name) and base.id in CLASS_BASES):
                self.refuse(node, f"declares class {node.name} with base {_show(base)}")
        scope = _Scope(self, {}, node)
        for item in node.body:
            if isinstance(item, ast.FunctionDef):
                self.check_function(item)
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                scope.expression(item.annotation)
                if item.value is not None:
                    scope.expression(item.value)
            elif isinstance(item, ast.Assign) and len(item.targets) == 1:
                target = item.targets[0]
                if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) \
                        and target.value.id == "__annotations__" and isinstance(target.slice, ast.Constant):
                    pass
                elif not isinstance(target, ast.Name):
                    self.refuse(item, f"assigns {_show(target)} in class {node.name}")
                scope.expression(item.value)
            elif not isinstance(item, ast.Pass):
                self.refuse(item, f"has a {type(item).__name__} statement in class {node.name}")

    def check_function(self, node: ast.FunctionDef) -> None:
        """A function or method: its signature and body."""
        if node.name in ("__setstate__", "__getstate__"):
            self.loader_hooks.append(node)
        elif node.name in DENIED_NAMES:
            self.refuse(node, f"defines a method named {node.name}")
        if node.decorator_list:
            self.refuse(node, f"decorates {node.name}")
        args = node.args
        params = args.posonlyargs + args.args + args.kwonlyargs
        if args.vararg or args.kwarg:
            self.refuse(node, f"gives {node.name} *args or **kwargs")
        scope = _Scope(self, {a.arg: (0, 0) for a in params}, node)
        for arg in params:
            if arg.annotation is not None:
                scope.expression(arg.annotation)
        for default in args.defaults + [d for d in args.kw_defaults if d is not None]:
            scope.expression(default)
        if node.returns is not None:
            scope.expression(node.returns)
        for stmt in node.body:
            scope.statement(stmt)


class _Scope:
    """Name resolution inside one function (or class body)."""

    def __init__(self, checker: CodeChecker, params: dict[str, tuple[int, int]], owner: ast.AST):
        self.checker = checker
        self.defined_at: dict[str, tuple[int, int]] = dict(params)  # name -> earliest position it is bound
        self.in_class = isinstance(owner, ast.ClassDef)
        if not self.in_class:
            self._collect_bindings(owner)

    def _collect_bindings(self, function: ast.FunctionDef) -> None:
        for stmt in ast.walk(function):
            if stmt is function:
                continue
            if isinstance(stmt, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef, ast.Lambda)):
                self.checker.refuse(stmt, f"nests a {type(stmt).__name__} in {function.name}")
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                self._bind(targets, (stmt.end_lineno, stmt.end_col_offset))
            elif isinstance(stmt, ast.For):
                self._bind([stmt.target], (stmt.iter.end_lineno, stmt.iter.end_col_offset))
            elif isinstance(stmt, ast.With):
                for item in stmt.items:
                    if item.optional_vars is not None:
                        end = (item.context_expr.end_lineno, item.context_expr.end_col_offset)
                        self._bind([item.optional_vars], end)

    def _bind(self, targets: list[ast.expr], position: tuple[int, int]) -> None:
        for target in targets:
            for node in _target_names(target):
                if node.id in RESERVED:
                    self.checker.refuse(node, f"assigns to the reserved name {node.id!r}")
                if node.id not in self.defined_at or position < self.defined_at[node.id]:
                    self.defined_at[node.id] = position

    def statement(self, stmt: ast.stmt) -> None:
        """Check one statement and everything inside it."""
        if not isinstance(stmt, _STATEMENTS):
            self.checker.refuse(stmt, f"uses a {type(stmt).__name__} statement")
        for node in _children(stmt):
            if isinstance(node, ast.stmt):
                self.statement(node)
            elif isinstance(node, ast.expr):
                self.expression(node)
            elif not isinstance(node, _LEAVES):
                self.checker.refuse(stmt, f"uses Python syntax Glassbox does not accept ({type(node).__name__})")
            else:
                for child in _children(node):
                    if isinstance(child, ast.expr):
                        self.expression(child)

    def expression(self, node: ast.expr) -> None:
        """Check one expression tree (iteratively: no recursion limit on long chains)."""
        stack = [node]
        while stack:
            current = stack.pop()
            if not isinstance(current, _EXPRESSIONS):
                self.checker.refuse(current, f"uses Python syntax Glassbox does not accept ({type(current).__name__})")
            if isinstance(current, ast.Constant):
                if not isinstance(current.value, (int, float, complex, str, bool, type(None), type(...))):
                    self.checker.refuse(current, f"has a {type(current.value).__name__} constant")
                continue
            if isinstance(current, ast.Attribute):
                base = self.attribute(current)
                if base is not None:
                    stack.append(base)
                continue
            if isinstance(current, ast.Name):
                self.name(current)
                continue
            if isinstance(current, ast.Call):
                self.special_call(current)
            children = []
            for child in _children(current):
                if isinstance(child, ast.keyword):
                    children.append(child.value)
                elif isinstance(child, ast.expr):
                    children.append(child)
                elif not isinstance(child, _LEAVES):
                    self.checker.refuse(current, f"uses Python syntax Glassbox does not accept "
                                                 f"({type(child).__name__})")
            stack.extend(reversed(children))  # source order: the first offending call is the one named

    def special_call(self, call: ast.Call) -> None:
        """``getattr(x, "name")`` reads attribute ``name``: check it like ``x.name``."""
        if isinstance(call.func, ast.Name) and call.func.id in ("getattr", "hasattr"):
            name = call.args[1] if len(call.args) > 1 else None
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                self.checker.refuse(call, f"calls {call.func.id} without a constant attribute name")
            self.member(call, call.args[1].value)

    def name(self, node: ast.Name) -> None:
        """A bare name: a local bound before this point, or an allowed global."""
        ident = node.id
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            if isinstance(node.ctx, ast.Del):
                self._use_local(node)
            return
        if ident in ROOTS:
            self.checker.refuse(node, f"uses {ident!r} as a value")
        if self.in_class and ident == "__annotations__":
            return
        if ident in self.defined_at:
            self._use_local(node)
        elif ident not in ALLOWED_GLOBALS:
            self.checker.refuse(node, f"uses the name {ident!r}, which TorchScript code may not use")

    def _use_local(self, node: ast.Name) -> None:
        if self.defined_at.get(node.id, (1 << 30, 0)) > (node.lineno, node.col_offset):
            self.checker.refuse(node, f"uses {node.id!r} before binding it")

    def attribute(self, node: ast.Attribute) -> ast.expr | None:
        """Resolve ``a.b.c``; returns the base expression still to check, if any."""
        parts = []
        base: ast.expr = node
        while isinstance(base, ast.Attribute):
            parts.append(base.attr)
            base = base.value
        parts.reverse()
        if isinstance(base, ast.Name) and base.id in ROOTS:
            self.namespace(node, base.id, parts)
            return None
        for part in parts:
            self.member(node, part)
        return base

    def namespace(self, node: ast.AST, root: str, parts: list[str]) -> None:
        """``torch.x`` / ``ops.ns.x`` / ``__torch__.a.B`` / ``CONSTANTS.c0``."""
        dotted = ".".join([root] + parts)
        if root == "CONSTANTS":
            if len(parts) != 1 or not re.match(r"^c\d+$", parts[0]):
                self.checker.refuse(node, f"refers to {dotted}")
            return
        if root == "__torch__":
            self.class_reference(node, dotted)
            return
        if root == "torch":
            while parts and parts[0] == "autograd":  # torch.autograd.x is aten::x too
                parts = parts[1:]
            if len(parts) == 3 and parts[0] == "ops":
                parts = parts[1:]
            elif len(parts) == 1:
                parts = ["aten", parts[0]]
            else:
                self.checker.refuse(node, f"refers to {dotted}, which is not an operator Glassbox allows")
        elif len(parts) != 2:
            self.checker.refuse(node, f"refers to {dotted}, which is not an operator Glassbox allows")
        op = "::".join(parts)
        if parts[1] in DENIED_NAMES:
            self.checker.refuse(node, f"calls operator {op}, which is not on Glassbox's operator allowlist")
        if not is_allowed(op):  # named with every other one the file calls (`refuse_missing`)
            self.checker.missing.setdefault(op, node)

    def class_reference(self, node: ast.AST, dotted: str) -> None:
        """``__torch__.…`` must name something the archive defines (or one attribute of it)."""
        if dotted.startswith("__torch__.torch.classes.quantized."):  # an int8 graph's packed weights: named
            self.checker.missing.setdefault(dotted.removeprefix("__torch__."), node)  # with its operators
            return
        if dotted.startswith("__torch__.torch.classes"):
            self.checker.refuse(node, f"uses the C++ class {dotted}")
        if dotted in self.checker.defined:
            return
        owner, _, attr = dotted.rpartition(".")
        if owner in self.checker.defined:
            self.member(node, attr)
            return
        self.checker.refuse(node, f"refers to {dotted}, which the archive does not define")

    def member(self, node: ast.AST, name: str) -> None:
        """An attribute or method name on a value.

        A name torch has an operator for must be allowed, unless an archive
        class declares an attribute or method of that name (``self.mode``);
        `DENIED_NAMES` (every operator that reaches outside tensors) never pass.
        """
        if name in DENIED_NAMES:
            self.checker.refuse(node, f"calls or reads {name!r}, which Glassbox never allows")
        if name in PROPERTIES or name in allowed_names("aten") or name in allowed_names("prim"):
            return
        if name in self.checker.members:
            return
        if name in known_op_names():
            self.checker.refuse(node, f"calls operator aten::{name} (as a method), which is not on Glassbox's "
                                      "operator allowlist")


def _show(node: ast.AST) -> str:
    try:
        return repr(ast.unparse(node)[:60])
    except RecursionError:
        return "a deeply nested expression"


def _children(node: ast.AST) -> Iterator[ast.AST]:
    for _, value in ast.iter_fields(node):
        if isinstance(value, list):
            yield from (v for v in value if isinstance(v, ast.AST))
        elif isinstance(value, ast.AST):
            yield value


def _target_names(target: ast.expr) -> Iterator[ast.Name]:
    stack = [target]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name):
            yield node
        elif isinstance(node, (ast.Tuple, ast.List)):
            stack.extend(node.elts)
        elif isinstance(node, ast.Starred):
            stack.append(node.value)


def refuse_missing(checkers: list[CodeChecker]) -> None:
    """Raise `UnsafeFile` naming every operator off the allowlist (and quantized C++ class) the archive's
    code uses, at the first one's file and line; an int8-quantised graph's say what to load instead."""
    found: dict[str, tuple[CodeChecker, ast.AST]] = {}
    for checker in checkers:
        for name, node in checker.missing.items():
            found.setdefault(name, (checker, node))
    if not found:
        return
    checker, node = next(iter(found.values()))
    ops = [n for n in found if "::" in n]
    classes = [n for n in found if "::" not in n]
    parts = [f"calls operator{'s' if len(ops) > 1 else ''} {_listed(ops)}"] if ops else []
    parts += [f"uses the C++ class{'es' if len(classes) > 1 else ''} {_listed(classes)}"] if classes else []
    verb = "is" if len(found) == 1 else "are"
    quantized = any(n.startswith(("quantized::", "torch.classes.quantized.")) for n in found)
    checker.refuse(node, f"{' and '.join(parts)}, which {verb} not on Glassbox's operator allowlist",
                   QUANTIZED_HINT if quantized else HINT)


def _listed(names: list[str], most: int = 12) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")
