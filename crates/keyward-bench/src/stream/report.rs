//! The tables, targets and JSON of `keyward-bench stream`. Targets (issue #23): each streaming
//! call at each size >= 0.8 x the null streaming service's MB/s; Keyward's peak resident growth
//! during the 4 GiB calls < 64 MiB.

use super::{Cell, Op, Settings, Side, SizeRun, size_name};

/// The throughput floor against the null service.
const RATIO_TARGET: f64 = 0.8;
/// The resident-growth ceiling, KiB.
const RSS_GROWTH_TARGET_KIB: u64 = 64 << 10;
/// The size the memory target is stated at.
const RSS_TARGET_SIZE: u64 = 4 << 30;

#[derive(Debug)]
pub(super) struct Report<'a> {
    settings: &'a Settings,
    runs: &'a [SizeRun],
    rss_after_kib: u64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Cell {
    fn mb_per_s(&self) -> Vec<f64> {
        self.samples
            .iter()
            .map(|s| self.size as f64 / s.call.elapsed.as_secs_f64() / 1e6)
            .collect()
    }

    fn median_mb_per_s(&self) -> f64 {
        median(&mut self.mb_per_s())
    }

    /// Milliseconds to the first response, one per call.
    fn first_response_ms(&self) -> Vec<f64> {
        self.samples
            .iter()
            .map(|s| s.call.first_response.as_secs_f64() * 1000.0)
            .collect()
    }

    /// The largest peak of the calls above `baseline_kib`.
    fn peak_growth_kib(&self, baseline_kib: u64) -> u64 {
        self.samples
            .iter()
            .map(|s| s.peak_kib.saturating_sub(baseline_kib))
            .max()
            .unwrap_or(0)
    }
}

impl SizeRun {
    fn cell(&self, op: Op, side: Side) -> Option<&Cell> {
        self.cells.iter().find(|c| c.op == op && c.side == side)
    }

    fn aes_gcm(&self) -> f64 {
        median(&mut self.aes_gcm_mb_per_s.clone())
    }
}

impl<'a> Report<'a> {
    pub(super) fn new(settings: &'a Settings, runs: &'a [SizeRun], rss_after_kib: u64) -> Self {
        Report {
            settings,
            runs,
            rss_after_kib,
        }
    }

    fn baseline(&self, side: Side) -> u64 {
        match side {
            Side::Null => self.settings.null_baseline_kib,
            Side::Keyward => self.settings.keyward_baseline_kib,
        }
    }

    fn ratio(run: &SizeRun, op: Op) -> Option<(f64, f64)> {
        Some((
            run.cell(op, Side::Null)?.median_mb_per_s(),
            run.cell(op, Side::Keyward)?.median_mb_per_s(),
        ))
    }

    /// Each target's description and whether it was met.
    fn targets(&self) -> Vec<(String, bool)> {
        let mut targets = Vec::new();
        for run in self.runs {
            for op in [Op::Encrypt, Op::Decrypt] {
                if let Some((null, keyward)) = Self::ratio(run, op) {
                    let ratio = keyward / null;
                    targets.push((
                        format!(
                            "{} {} >= {RATIO_TARGET} x null MB/s (got {ratio:.2})",
                            op.name(),
                            size_name(run.size)
                        ),
                        ratio >= RATIO_TARGET,
                    ));
                }
            }
        }
        // Stated at 4 GiB; a run without it is judged at its largest size, and says so.
        if let Some(run) = self.runs.iter().max_by_key(|r| r.size) {
            let growth = [Op::Encrypt, Op::Decrypt]
                .iter()
                .filter_map(|op| run.cell(*op, Side::Keyward))
                .map(|c| c.peak_growth_kib(self.settings.keyward_baseline_kib))
                .max()
                .unwrap_or(0);
            let at = if run.size == RSS_TARGET_SIZE {
                size_name(run.size)
            } else {
                format!(
                    "{} ({} not run)",
                    size_name(run.size),
                    size_name(RSS_TARGET_SIZE)
                )
            };
            targets.push((
                format!(
                    "Keyward server peak RSS growth at {at} < {} MiB (got {:.1} MiB)",
                    RSS_GROWTH_TARGET_KIB >> 10,
                    mib(growth)
                ),
                growth < RSS_GROWTH_TARGET_KIB,
            ));
        }
        targets
    }

    pub(super) fn text(&self) -> String {
        let s = self.settings;
        let mut text = format!(
            "Streaming over 127.0.0.1: `keyward serve` vs the null streaming service, each its own process; \
             client messages of {}, frames of {}{}; median of {} call(s) per cell, Keyward and null alternating\n",
            size_name(s.message_size as u64),
            size_name(u64::from(s.frame_size)),
            match (s.client_window, s.adaptive_window) {
                (None, false) => String::new(),
                (window, adaptive) => format!(
                    ", client window {}{}",
                    window.map_or("default".to_owned(), |w| size_name(u64::from(w))),
                    if adaptive { " (adaptive)" } else { "" }
                ),
            },
            s.rounds
        );
        text.push_str(
            "| op | size | AES-256-GCM seal in process MB/s | null MB/s | Keyward MB/s | Keyward / null | Keyward / AES-GCM |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for op in [Op::Encrypt, Op::Decrypt] {
            for run in self.runs {
                if let Some((null, keyward)) = Self::ratio(run, op) {
                    let aes = run.aes_gcm();
                    text.push_str(&format!(
                        "| {} | {} | {aes:.0} | {null:.0} | {keyward:.0} | {:.2} | {:.2} |\n",
                        op.name(),
                        size_name(run.size),
                        keyward / null,
                        keyward / aes
                    ));
                }
            }
        }

        text.push_str(&format!(
            "\nServer memory: peak RSS during the calls above the size after the warm-up (Keyward {:.1} MiB, null {:.1} MiB), \
             largest of the calls ({}); Keyward's RSS after the run: {:.1} MiB\n",
            mib(s.keyward_baseline_kib),
            mib(s.null_baseline_kib),
            if s.exact_peaks {
                "VmHWM reset before each call, and VmRSS sampled every 10 ms"
            } else {
                "VmRSS sampled every 10 ms; VmHWM could not be reset"
            },
            mib(self.rss_after_kib)
        ));
        text.push_str(
            "| size | Keyward EncryptStream MiB | Keyward DecryptStream MiB | null EncryptStream MiB | null DecryptStream MiB |\n\
             |---|---|---|---|---|\n",
        );
        for run in self.runs {
            let growth = |op, side| {
                run.cell(op, side).map_or("-".to_owned(), |c| {
                    format!("{:.1}", mib(c.peak_growth_kib(self.baseline(side))))
                })
            };
            text.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                size_name(run.size),
                growth(Op::Encrypt, Side::Keyward),
                growth(Op::Decrypt, Side::Keyward),
                growth(Op::Encrypt, Side::Null),
                growth(Op::Decrypt, Side::Null),
            ));
        }

        text.push_str(
            "\nTime to first byte: DecryptStream, from the call's start to its first response, ms (median; min-max)\n\
             | size | null | Keyward |\n|---|---|---|\n",
        );
        for run in self.runs {
            let ttfb = |side| {
                run.cell(Op::Decrypt, side).map_or("-".to_owned(), |c| {
                    let mut ms = c.first_response_ms();
                    let m = median(&mut ms);
                    format!(
                        "{m:.1} ({:.1}-{:.1})",
                        ms.first().copied().unwrap_or(0.0),
                        ms.last().copied().unwrap_or(0.0)
                    )
                })
            };
            text.push_str(&format!(
                "| {} | {} | {} |\n",
                size_name(run.size),
                ttfb(Side::Null),
                ttfb(Side::Keyward)
            ));
        }

        text.push_str("\nUntimed preparation per size (Keyward EncryptStream to the scratch file; DecryptStream checking every byte)\n");
        for run in self.runs {
            text.push_str(&format!(
                "- {}: envelope {} bytes ({:.4} x the plaintext); written in {:.2} s, checked in {:.2} s\n",
                size_name(run.size),
                run.envelope_bytes,
                run.envelope_bytes as f64 / run.size.max(1) as f64,
                run.prepare.as_secs_f64(),
                run.check.as_secs_f64()
            ));
        }

        text.push_str("\nTargets\n");
        for (name, met) in self.targets() {
            text.push_str(&format!(
                "- [{}] {name}\n",
                if met { "met" } else { "NOT MET" }
            ));
        }
        text
    }

    pub(super) fn json(&self) -> serde_json::Value {
        let s = self.settings;
        let cell_json = |c: &Cell| {
            let mut ms = c.first_response_ms();
            serde_json::json!({
                "op": c.op.name(),
                "side": match c.side { Side::Null => "null", Side::Keyward => "keyward" },
                "median_mb_per_s": c.median_mb_per_s(),
                "median_first_response_ms": median(&mut ms),
                "peak_rss_growth_kib": c.peak_growth_kib(self.baseline(c.side)),
                "calls": c.samples.iter().map(|x| serde_json::json!({
                    "elapsed_s": x.call.elapsed.as_secs_f64(),
                    "mb_per_s": c.size as f64 / x.call.elapsed.as_secs_f64() / 1e6,
                    "first_response_ms": x.call.first_response.as_secs_f64() * 1000.0,
                    "received_bytes": x.call.received,
                    "rss_before_kib": x.rss_before_kib,
                    "peak_rss_kib": x.peak_kib,
                })).collect::<Vec<_>>(),
            })
        };
        let ratios = |r: &SizeRun| {
            [Op::Encrypt, Op::Decrypt]
                .iter()
                .filter_map(|op| {
                    let (null, keyward) = Self::ratio(r, *op)?;
                    Some(
                        serde_json::json!({ "op": op.name(), "keyward_over_null": keyward / null }),
                    )
                })
                .collect::<Vec<_>>()
        };
        serde_json::json!({
            "settings": {
                "message_size": s.message_size,
                "frame_size": s.frame_size,
                "rounds": s.rounds,
                "client_window": s.client_window,
                "adaptive_window": s.adaptive_window,
                "keyward_baseline_rss_kib": s.keyward_baseline_kib,
                "null_baseline_rss_kib": s.null_baseline_kib,
                "exact_peaks": s.exact_peaks,
            },
            "keyward_rss_after_kib": self.rss_after_kib,
            "sizes": self.runs.iter().map(|r| serde_json::json!({
                "size": r.size,
                "aes_gcm_mb_per_s": r.aes_gcm(),
                "envelope_bytes": r.envelope_bytes,
                "prepare_s": r.prepare.as_secs_f64(),
                "check_s": r.check.as_secs_f64(),
                "ratios": ratios(r),
                "cells": r.cells.iter().map(cell_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "targets": self.targets().iter().map(|(name, met)| serde_json::json!({ "target": name, "met": met })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
