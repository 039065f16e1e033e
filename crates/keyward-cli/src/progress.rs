//! The progress line of a streamed `encrypt` or `decrypt` on stderr: bytes done, rate, and,
//! when the input's size is known, a bar and the time left. Drawn only when stderr is a
//! terminal (and not with `--no-progress`), so logs and pipes never see it; a transfer
//! shorter than [`FIRST_DRAW`] draws nothing.
//!
//! Hand-written rather than `indicatif`: one line redrawn with `\r` needs no terminal
//! library, and the CLI takes no dependency for it.

use std::{
    fmt::Write as _,
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Nothing is drawn before this: a quick command stays silent.
const FIRST_DRAW: Duration = Duration::from_millis(500);
/// How often the line is redrawn.
const REDRAW: Duration = Duration::from_millis(200);
/// Width of the bar between its brackets.
const BAR: usize = 20;

/// A running progress line; [`Progress::finish`] ends it.
pub(crate) struct Progress {
    done: Arc<AtomicU64>,
    start: Instant,
    /// The task redrawing the line, when shown; it returns the width of what it last drew.
    ticker: Option<tokio::task::JoinHandle<()>>,
    drawn: Arc<AtomicU64>,
}

impl Progress {
    /// Starts the line (if `show`) for `done` bytes out of `total`. Needs a tokio runtime.
    pub(crate) fn start(show: bool, done: Arc<AtomicU64>, total: Option<u64>) -> Progress {
        let start = Instant::now();
        let drawn = Arc::new(AtomicU64::new(0));
        let ticker = show.then(|| {
            let (done, drawn) = (Arc::clone(&done), Arc::clone(&drawn));
            tokio::spawn(async move {
                let mut interval = tokio::time::interval_at(
                    tokio::time::Instant::from_std(start + FIRST_DRAW),
                    REDRAW,
                );
                loop {
                    interval.tick().await;
                    let line = render(done.load(Ordering::Relaxed), total, start.elapsed());
                    draw(&line, &drawn);
                }
            })
        });
        Progress {
            done,
            start,
            ticker,
            drawn,
        }
    }

    /// Stops redrawing. After a success, a line that was drawn is replaced by the summary;
    /// after a failure it is erased, so the error starts on a clean line.
    pub(crate) fn finish(self, ok: bool) {
        let Some(ticker) = self.ticker else { return };
        ticker.abort();
        if self.drawn.load(Ordering::Relaxed) == 0 {
            return;
        }
        if ok {
            let summary = render_summary(self.done.load(Ordering::Relaxed), self.start.elapsed());
            draw(&summary, &self.drawn);
            eprintln!();
        } else {
            draw("", &self.drawn);
            eprint!("\r");
        }
    }
}

/// Redraws the line over the previous one (padding with spaces where it was longer: no
/// terminal escape sequences, so any terminal shows it).
fn draw(line: &str, drawn: &AtomicU64) {
    let width = line.chars().count();
    let previous = usize::try_from(drawn.swap(width as u64, Ordering::Relaxed)).unwrap_or(0);
    let pad = previous.saturating_sub(width);
    let mut stderr = std::io::stderr().lock();
    let _ = write!(stderr, "\r{line}{:pad$}", "");
    let _ = stderr.flush();
}

/// The line for `done` bytes out of `total` after `elapsed`, e.g.
/// `412.0 MiB / 1.0 GiB [########            ]  40%  95.1 MiB/s  ETA 6s`, or without a total
/// `412.0 MiB  95.1 MiB/s`.
pub(crate) fn render(done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let rate = rate(done, elapsed);
    let rate_text = rate.map_or_else(|| "-".to_owned(), |r| format!("{}/s", bytes(r)));
    let Some(total) = total.filter(|t| *t > 0) else {
        return format!("{}  {rate_text}", bytes(done));
    };
    let shown = done.min(total);
    let filled = usize::try_from(shown.saturating_mul(BAR as u64) / total).unwrap_or(BAR);
    let percent = shown.saturating_mul(100) / total;
    let eta = match rate {
        Some(r) if r > 0 => duration((total - shown) / r),
        _ => "?".to_owned(),
    };
    let mut line = format!("{} / {} [", bytes(shown), bytes(total));
    line.push_str(&"#".repeat(filled));
    line.push_str(&" ".repeat(BAR - filled));
    let _ = write!(line, "] {percent:>3}%  {rate_text}  ETA {eta}");
    line
}

/// The last line of a successful transfer, e.g. `1.0 GiB in 10.8 s (95.1 MiB/s)`.
pub(crate) fn render_summary(done: u64, elapsed: Duration) -> String {
    let rate = rate(done, elapsed).map_or_else(String::new, |r| format!(" ({}/s)", bytes(r)));
    format!("{} in {:.1} s{rate}", bytes(done), elapsed.as_secs_f64())
}

/// Bytes per second, once some time has passed.
fn rate(done: u64, elapsed: Duration) -> Option<u64> {
    let millis = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    (millis > 0).then(|| done.saturating_mul(1000) / millis)
}

/// `512 B`, `1.5 KiB`, `412.0 MiB`, `1.0 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `42s`, `3m07s`, `2h05m`.
fn duration(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_line_shows_bytes_bar_percent_rate_and_time_left() {
        assert_eq!(
            render(400 * MIB, Some(1000 * MIB), Duration::from_secs(4)),
            "400.0 MiB / 1000.0 MiB [########            ]  40%  100.0 MiB/s  ETA 6s"
        );
        assert_eq!(
            render(0, Some(2 << 30), Duration::from_secs(1)),
            "0 B / 2.0 GiB [                    ]   0%  0 B/s  ETA ?"
        );
        assert_eq!(
            render(1 << 30, Some(1 << 30), Duration::from_millis(10_800)),
            "1.0 GiB / 1.0 GiB [####################] 100%  94.8 MiB/s  ETA 0s"
        );
        // Minutes and hours left.
        assert!(render(MIB, Some(200 * MIB), Duration::from_secs(1)).ends_with("ETA 3m19s"));
        assert!(render(MIB, Some(8000 * MIB), Duration::from_secs(1)).ends_with("ETA 2h13m"));
    }

    #[test]
    fn without_a_total_the_line_shows_bytes_and_rate_only() {
        assert_eq!(
            render(1536, None, Duration::from_secs(2)),
            "1.5 KiB  768 B/s"
        );
        // No time elapsed yet: no rate rather than a division by zero.
        assert_eq!(render(0, None, Duration::ZERO), "0 B  -");
        assert_eq!(render(10, Some(0), Duration::ZERO), "10 B  -");
    }

    #[test]
    fn more_bytes_than_the_total_never_overflow_the_bar() {
        // A file that grew while it was read.
        let line = render(300, Some(200), Duration::from_secs(1));
        assert_eq!(
            line,
            "200 B / 200 B [####################] 100%  300 B/s  ETA 0s"
        );
    }

    #[test]
    fn the_summary_gives_size_time_and_rate() {
        assert_eq!(
            render_summary(1 << 30, Duration::from_millis(10_800)),
            "1.0 GiB in 10.8 s (94.8 MiB/s)"
        );
        assert_eq!(render_summary(0, Duration::ZERO), "0 B in 0.0 s");
    }
}
