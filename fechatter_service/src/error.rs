//! Error reporting shared by both services.

/// Formats an error with its whole cause chain (`outer: cause: root cause`), for logs.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_lists_every_cause() {
        let err = Outer(std::io::Error::other("root"));
        assert_eq!(super::chain(&err), "outer: root");
    }
}
