//! One way to report an error: the error and each of its causes, on one
//! line, joined by ": " (`creating job cgroup /sys/fs/cgroup/…: Permission
//! denied (os error 13)`). Every message ffrtmp prints or puts in an event
//! (`degraded.reason`) is made by [`chain`], so each names what failed and
//! the errno the system gave.
use std::{error::Error, fmt};

/// `e` and its causes, outermost first: `Display` it.
pub(crate) fn chain<'a>(e: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain(e)
}

/// An error's chain of causes, displayed on one line.
pub(crate) struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    #[derive(Debug, thiserror::Error)]
    #[error("creating job cgroup /x")]
    struct Outer(#[source] io::Error);

    #[test]
    fn causes_follow_on_one_line() {
        let e = Outer(io::Error::from_raw_os_error(13));
        assert_eq!(
            super::chain(&e).to_string(),
            "creating job cgroup /x: Permission denied (os error 13)"
        );
        // The same text as anyhow's alternate form, which the CLI used.
        assert_eq!(
            super::chain(&e).to_string(),
            format!(
                "{:#}",
                anyhow::Error::new(Outer(io::Error::from_raw_os_error(13)))
            )
        );
    }
}
