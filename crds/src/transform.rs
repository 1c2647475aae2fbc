//! The CEL expressions of `ProxyRoute.spec.transform`, checked by one function that both
//! `compile()` (which reports a problem with the field path, so `check -f` and the `Ready`
//! condition say what to fix) and the proxy (which keeps the parsed program, compiled once per
//! config) call, so the two never disagree about what is valid.
//!
//! The `cel` crate parses and evaluates but has no type checker, so [`check`] does the static
//! checks that matter here itself: syntax, variables (`request`, and `response` on answers only),
//! functions (the standard library the proxy evaluates with), and, for an expression that reads
//! no request data, one evaluation, so `1 + 'a'` is refused before it is served. What depends
//! on request data can only fail at run time, as `TRANSFORM_FAILED`.

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::{Context, ExecutionError, Program};

/// The variable holding the request.
pub const REQUEST: &str = "request";
/// The variable holding the answer, in `transform.response` operations.
pub const RESPONSE: &str = "response";

/// Functions of `cel::Context::default()`, the only ones the proxy evaluates with (the crate
/// offers no way to list them). Operators and macros are not functions and never checked.
const FUNCTIONS: [&str; 34] = [
    "contains",
    "size",
    "max",
    "min",
    "startsWith",
    "endsWith",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "optional.none",
    "optional.of",
    "optional.ofNonZeroValue",
    "value",
    "hasValue",
    "or",
    "orValue",
    "matches",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    // Parsed as calls, evaluated by the interpreter itself.
    "has",
    "dyn",
    "type",
];

/// Headers a transform may not set or remove: message framing, what Keygate writes itself
/// (client address, cookies, its own signals), and what a client may not vouch for.
pub const RESERVED_HEADERS: [&str; 22] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "cookie",
    "set-cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    "x-keygate-error",
    "x-keygate-chain",
    "x-keygate-csrf",
];

/// Which list an operation is in: what its expressions may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `transform.request`: `request` only.
    Request,
    /// `transform.response`: `request` (without its body) and `response`.
    Response,
}

/// A parsed expression and what evaluating it needs.
#[derive(Debug)]
pub struct Checked {
    /// The program, ready to run.
    pub program: Program,
    /// Whether it may read `request.body` or `response.body` (or the whole object), so the
    /// body must be buffered and parsed before it runs.
    pub reads_body: bool,
    /// The variables it reads, each with the field read (`None`: the whole variable). The
    /// interpreter copies a variable's value on every access, so the proxy hands each
    /// expression only what it reads.
    pub reads: Vec<(&'static str, Option<String>)>,
}

/// Parses `source` and checks what can be checked without a request; the error is a sentence
/// for a person (it quotes the expression's own text, never request data).
pub fn check(source: &str, side: Side) -> Result<Checked, String> {
    let program = Program::compile(source).map_err(|e| match e.errors.first() {
        Some(first) => format!(
            "CEL syntax error at line {}, column {}: {}",
            first.pos.0, first.pos.1, first.msg
        ),
        None => "CEL syntax error".to_string(),
    })?;
    let mut walk = Walk::default();
    walk.expr(program.expression(), &mut Vec::new());
    if let Some(f) = walk.functions.iter().find(|f| !FUNCTIONS.contains(&f.as_str())) {
        return Err(format!(
            "unknown function {f}(); use the CEL standard functions (size, contains, startsWith, matches, string, int, ...)"
        ));
    }
    for var in &walk.variables {
        match (var.as_str(), side) {
            (REQUEST, _) | (RESPONSE, Side::Response) => {}
            (RESPONSE, Side::Request) => {
                return Err("response is only known in transform.response operations".to_string());
            }
            (other, Side::Request) => {
                return Err(format!("unknown variable {other}; request operations can read request"));
            }
            (other, Side::Response) => {
                return Err(format!(
                    "unknown variable {other}; response operations can read request and response"
                ));
            }
        }
    }
    if walk.variables.is_empty()
        && let Err(e) = program.execute(&Context::default())
    {
        return Err(format!("the expression always fails: {}", describe(&e)));
    }
    Ok(Checked {
        program,
        reads_body: walk.reads_body,
        reads: walk.reads,
    })
}

/// What went wrong in an evaluation, without any value: the crate's own messages print the
/// values involved, which may be request data (a card number, a token).
pub fn describe(e: &ExecutionError) -> &'static str {
    match e {
        ExecutionError::NoSuchKey(_) => "a field or key it reads is missing",
        ExecutionError::IndexOutOfBounds(_) => "a list index is out of range",
        ExecutionError::UnexpectedType { .. }
        | ExecutionError::UnsupportedTargetType { .. }
        | ExecutionError::NotSupportedAsMethod { .. }
        | ExecutionError::NoSuchOverload
        | ExecutionError::ValuesNotComparable(..)
        | ExecutionError::UnsupportedUnaryOperator(..)
        | ExecutionError::UnsupportedBinaryOperator(..)
        | ExecutionError::UnsupportedKeyType(_)
        | ExecutionError::UnsupportedMapIndex(_)
        | ExecutionError::UnsupportedListIndex(_)
        | ExecutionError::UnsupportedIndex(..) => "a value has the wrong type for the operation or function",
        ExecutionError::DivisionByZero(_) | ExecutionError::RemainderByZero(_) => "division by zero",
        ExecutionError::Overflow(..) => "an arithmetic overflow",
        ExecutionError::FunctionError { .. } | ExecutionError::InvalidArgumentCount { .. } => {
            "a function was called with arguments it cannot take"
        }
        ExecutionError::UndeclaredReference(_) => "it names something undeclared",
        _ => "the expression could not be evaluated",
    }
}

/// Free variables, functions called, and whether a body may be read.
#[derive(Default)]
struct Walk {
    variables: Vec<String>,
    functions: Vec<String>,
    reads_body: bool,
    reads: Vec<(&'static str, Option<String>)>,
}

impl Walk {
    fn variable(&mut self, name: &str) {
        if !self.variables.iter().any(|v| v == name) {
            self.variables.push(name.to_string());
        }
    }

    fn read(&mut self, root: &str, field: Option<&str>) {
        let root = if root == REQUEST { REQUEST } else { RESPONSE };
        let read = (root, field.map(str::to_string));
        if !self.reads.contains(&read) {
            self.reads.push(read);
        }
    }

    /// `request.<field>` or `request['<field>']` with `request` free: reads the body only if
    /// the field is `body`.
    fn field_of_root(&mut self, operand: &IdedExpr, field: &str, scope: &[String]) -> bool {
        match &operand.expr {
            Expr::Ident(name) if (name == REQUEST || name == RESPONSE) && !scope.contains(name) => {
                self.variable(name);
                self.reads_body |= field == "body";
                self.read(name, Some(field));
                true
            }
            _ => false,
        }
    }

    fn expr(&mut self, e: &IdedExpr, scope: &mut Vec<String>) {
        match &e.expr {
            Expr::Ident(name) => {
                if !scope.contains(name) && !name.starts_with('@') {
                    self.variable(name);
                    // The whole object, passed on somewhere: its body may be read.
                    if name == REQUEST || name == RESPONSE {
                        self.reads_body = true;
                        self.read(name, None);
                    }
                }
            }
            Expr::Select(s) => {
                if !self.field_of_root(&s.operand, &s.field, scope) {
                    self.expr(&s.operand, scope);
                }
            }
            Expr::Call(call) => {
                if call.func_name == "_[_]"
                    && let [operand, key] = &call.args[..]
                    && let Expr::Literal(LiteralValue::String(field)) = &key.expr
                    && self.field_of_root(operand, field, scope)
                {
                    return;
                }
                let operator = call.func_name.starts_with(['_', '@', '!', '-']);
                // `optional.of(x)` is a call of `of` on the identifier `optional`.
                let qualified = match call.target.as_deref().map(|t| &t.expr) {
                    Some(Expr::Ident(ns)) if !scope.contains(ns) => {
                        let name = format!("{ns}.{}", call.func_name);
                        FUNCTIONS.contains(&name.as_str()).then_some(name)
                    }
                    _ => None,
                };
                match qualified {
                    Some(name) => self.functions.push(name),
                    None => {
                        if !operator {
                            self.functions.push(call.func_name.clone());
                        }
                        if let Some(target) = &call.target {
                            self.expr(target, scope);
                        }
                    }
                }
                for arg in &call.args {
                    self.expr(arg, scope);
                }
            }
            Expr::Comprehension(c) => {
                self.expr(&c.iter_range, scope);
                self.expr(&c.accu_init, scope);
                let depth = scope.len();
                scope.push(c.iter_var.clone());
                scope.extend(c.iter_var2.clone());
                scope.push(c.accu_var.clone());
                self.expr(&c.loop_cond, scope);
                self.expr(&c.loop_step, scope);
                self.expr(&c.result, scope);
                scope.truncate(depth);
            }
            Expr::List(list) => {
                for item in &list.elements {
                    self.expr(item, scope);
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(m) => {
                            self.expr(&m.key, scope);
                            self.expr(&m.value, scope);
                        }
                        EntryExpr::StructField(f) => self.expr(&f.value, scope),
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        self.expr(&f.value, scope);
                    }
                }
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(source: &str, side: Side) -> bool {
        check(source, side)
            .unwrap_or_else(|e| panic!("{source}: {e}"))
            .reads_body
    }

    fn err(source: &str, side: Side) -> String {
        check(source, side)
            .err()
            .unwrap_or_else(|| panic!("{source} should be refused"))
    }

    #[test]
    fn body_reads_are_found() {
        assert!(!ok("request.headers['x-user'] + ':' + request.method", Side::Request));
        assert!(!ok("'static'", Side::Request));
        assert!(!ok("request.query.page", Side::Request));
        assert!(ok("request.body.amount * 2", Side::Request));
        assert!(ok("request['body']", Side::Request));
        assert!(ok("has(request.body.x)", Side::Request));
        assert!(ok("{'wrapped': request}", Side::Request));
        assert!(ok("response.body.items.map(i, i.id)", Side::Response));
        assert!(!ok("string(response.status)", Side::Response));
        // A comprehension variable called request is not the request.
        assert!(!ok("[1, 2].map(request, request * 2)", Side::Request));
        let reads = |source: &str| check(source, Side::Response).unwrap().reads;
        assert_eq!(
            reads("request.method + request['path'] + string(response.status) + request.method"),
            [
                (REQUEST, Some("method".to_string())),
                (REQUEST, Some("path".to_string())),
                (RESPONSE, Some("status".to_string()))
            ]
        );
        assert_eq!(reads("{'r': response}"), [(RESPONSE, None)]);
        assert_eq!(reads("'constant'"), []);
    }

    #[test]
    fn macros_operators_and_qualified_functions_are_known() {
        ok(
            "request.headers.exists(k, k.startsWith('x-')) && size(request.path) > 0 ? 'a' : 'b'",
            Side::Request,
        );
        ok("optional.of(1).hasValue()", Side::Request);
        ok(
            "request.method in ['GET', 'HEAD'] && !(request.path.matches('^/x'))",
            Side::Request,
        );
    }

    #[test]
    fn mistakes_are_named() {
        assert!(err("request.headers[", Side::Request).starts_with("CEL syntax error at line 1"));
        assert!(err("lowerAscii(request.method)", Side::Request).contains("unknown function lowerAscii()"));
        assert!(err("req.method", Side::Request).contains("unknown variable req"));
        assert!(err("response.status", Side::Request).contains("only known in transform.response"));
        assert!(err("1 + 'a'", Side::Request).contains("always fails: a value has the wrong type"));
        assert!(err("1 / 0", Side::Response).contains("division by zero"));
    }
}
