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
