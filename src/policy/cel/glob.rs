//! `globMatch(pattern, name)`: grant values written with wildcards.
//!
//! Tailnet policy grants often name tools by pattern (`"github_read_*"`).
//! `*` matches any run of characters (none included), `?` exactly one
//! character; every other character, `.` and `[` included, matches itself.
//! There is no escape: a grant cannot name a tool whose name contains `*`
//! or `?` literally except through the pattern itself.

use ::cel::common::types::{CelBool, CelString};
use ::cel::common::value::CowVal;
use ::cel::ExecutionError;

/// `globMatch(string, string) -> bool`.
pub(super) fn glob_fn<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [pattern, name] = args.as_slice() else {
        return Err(ExecutionError::invalid_argument_count(2, args.len()));
    };
    let matched = glob_match(text(pattern)?, text(name)?);
    Ok(CowVal::Owned(Box::new(CelBool::from(matched))))
}

fn text<'a>(v: &'a CowVal<'_, '_>) -> Result<&'a str, ExecutionError> {
    v.downcast_ref::<CelString>()
        .map(|s| s.inner())
        .ok_or_else(|| {
            ExecutionError::function_error(
                "globMatch",
                format!("expected strings, got {}", v.get_type().name()),
            )
        })
}

/// Whether `name` matches `pattern`, by characters. Linear backtracking:
/// only the last `*` is ever retried, so no pattern is exponential.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and the name position it has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn star_question_and_literals() {
        let table = [
            ("*", "", true),
            ("*", "anything", true),
            ("", "", true),
            ("", "x", false),
            ("echo", "echo", true),
            ("echo", "echo2", false),
            ("github_read_*", "github_read_issue", true),
            ("github_read_*", "github_read_", true),
            ("github_read_*", "github_write_issue", false),
            ("*_read_*", "gitlab_read_mr", true),
            ("get-?um", "get-sum", true),
            ("get-?um", "get-um", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            (
                "a*a*a*a*b",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                false,
            ),
            // Only `*` and `?` are special.
            ("file.[ch]", "file.c", false),
            ("file.[ch]", "file.[ch]", true),
            ("res://x/?", "res://x/é", true),
            ("**", "x", true),
        ];
        for (pattern, name, want) in table {
            assert_eq!(glob_match(pattern, name), want, "{pattern:?} vs {name:?}");
        }
    }
}
