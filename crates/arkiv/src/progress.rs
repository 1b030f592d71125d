//! Progress bars on a terminal. A ticker thread reads the operation's
//! atomic counters ten times a second; the operation itself never waits on
//! the display.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::Global;

pub struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

fn progress_lines() -> Option<Duration> {
    let secs: f64 = std::env::var("ARKIV_PROGRESS_LINES").ok()?.parse().ok()?;
    (secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

pub fn enabled(g: &Global) -> bool {
    !g.json && !g.quiet && !g.no_progress && std::io::stderr().is_terminal()
}

impl Ticker {
    /// `update` sets the bar's position, length and message from counters.
    pub fn start<F>(g: &Global, template: &str, update: F) -> Ticker
    where
        F: Fn(&ProgressBar) + Send + 'static,
    {
        if !enabled(g) {
            if let Some(every) = progress_lines() {
                return Ticker::lines(every, update);
            }
            return Ticker { stop: Arc::new(AtomicBool::new(true)), handle: None, bar: None };
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (bar.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                update(&b);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Ticker { stop, handle: Some(handle), bar: Some(bar) }
    }

    /// Progress for a supervisor rather than a person: with
    /// `ARKIV_PROGRESS_LINES=SECONDS` (the daemon sets it for its jobs) a
    /// line `progress: …` goes to standard error every so many seconds,
    /// read from a hidden bar the operation updates as usual.
    fn lines<F>(every: Duration, update: F) -> Ticker
    where
        F: Fn(&ProgressBar) + Send + 'static,
    {
        let bar = ProgressBar::hidden();
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (bar.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut last = std::time::Instant::now();
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() >= every {
                    update(&b);
                    let msg = b.message();
                    let line = match b.length() {
                        Some(len) if len > 0 => format!("{}/{} {msg}", b.position(), len),
                        _ => msg.to_string(),
                    };
                    if !line.trim().is_empty() {
                        eprintln!("progress: {}", line.trim());
                    }
                    last = std::time::Instant::now();
                }
            }
        });
        Ticker { stop, handle: Some(handle), bar: Some(bar) }
    }

    /// A spinner whose message the operation sets as it moves on.
    pub fn new(g: &Global, label: &str) -> Ticker {
        Ticker::start(g, &format!("{{spinner}} {{elapsed_precise}} {label}: {{msg}}"), |_| {})
    }

    pub fn set_message(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
        }
    }

    pub fn finish(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop_now();
    }
}
