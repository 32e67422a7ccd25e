//! The one retry helper: doubling delay from `initial` up to `cap`, at most
//! `max_tries` attempts (or forever). Used for HTTP, and later mounts and
//! udev settling.

use std::future::Future;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub initial: Duration,
    pub cap: Duration,
    /// `None`: retry until the operation succeeds or says it must not be retried.
    pub max_tries: Option<u32>,
}

/// What an attempt returns: done, try again, or give up now.
pub enum Attempt<T, E> {
    Done(T),
    Retry(E),
    Fatal(E),
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            cap: Duration::from_secs(5),
            max_tries: Some(8),
        }
    }
}

impl Retry {
    /// The delay before try number `n` (1-based; try 1 has none).
    pub fn delay_before(&self, n: u32) -> Duration {
        if n <= 1 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(n - 2).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.cap)
    }

    /// Run `f` until it is done, fails fatally, or the tries run out. `on_retry`
    /// sees each retryable error with the try number and the coming delay.
    pub async fn run<T, E, F, Fut>(
        &self,
        mut f: F,
        mut on_retry: impl FnMut(&E, u32, Duration),
    ) -> Result<T, RetryError<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Attempt<T, E>>,
    {
        let mut n = 1;
        loop {
            match f(n).await {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fatal(e) => return Err(RetryError::Fatal(e)),
                Attempt::Retry(e) => {
                    if self.max_tries.is_some_and(|max| n >= max) {
                        return Err(RetryError::Exhausted { tries: n, last: e });
                    }
                    let d = self.delay_before(n + 1);
                    on_retry(&e, n, d);
                    tokio::time::sleep(d).await;
                    n += 1;
                }
            }
        }
    }
}

#[derive(Debug)]
pub enum RetryError<E> {
    Fatal(E),
    Exhausted { tries: u32, last: E },
}

impl<E: std::fmt::Display> std::fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fatal(e) => write!(f, "{e}"),
            Self::Exhausted { tries, last } => {
                write!(f, "maximum number of retries ({tries}) reached: {last}")
            }
        }
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for RetryError<E> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_cap() {
        let r = Retry {
            initial: Duration::from_millis(100),
            cap: Duration::from_millis(500),
            max_tries: None,
        };
        let d: Vec<u128> = (1..=6).map(|n| r.delay_before(n).as_millis()).collect();
        assert_eq!(d, vec![0, 100, 200, 400, 500, 500]);
        assert_eq!(r.delay_before(200), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_max_tries_and_on_fatal() {
        let r = Retry {
            max_tries: Some(3),
            ..Default::default()
        };
        let mut seen = 0;
        let e = r
            .run(
                |_| async { Attempt::<(), _>::Retry("down") },
                |_, _, _| seen += 1,
            )
            .await
            .unwrap_err();
        assert_eq!(seen, 2);
        assert_eq!(e.to_string(), "maximum number of retries (3) reached: down");

        let e = r
            .run(
                |n| async move {
                    if n < 2 {
                        Attempt::<(), _>::Retry("x")
                    } else {
                        Attempt::Fatal("denied")
                    }
                },
                |_, _, _| {},
            )
            .await
            .unwrap_err();
        assert!(matches!(e, RetryError::Fatal("denied")));

        let v = r
            .run(
                |n| async move {
                    if n < 3 {
                        Attempt::Retry("x")
                    } else {
                        Attempt::<u32, &str>::Done(n)
                    }
                },
                |_, _, _| {},
            )
            .await
            .unwrap();
        assert_eq!(v, 3);
    }
}
