//! The TLS phase: what TLS costs, measured side by side with plaintext on one server.
//!
//! The server the benchmark starts also listens with TLS (`--tls-port 0`, its
//! self-signed certificate); the benchmark trusts the fingerprint the server printed
//! (SPEC §9). Each of `--tls-rounds` rounds runs the fan-out phase and the resume phase
//! once over plain TCP and once over TLS, alternating which goes first, and the phase
//! ends with each figure for both and the ratio TLS / plaintext per round. A TLS
//! connection makes a full handshake each time (no TLS session is resumed, as with the
//! terminal client), so the resume figure includes one handshake per resume.

use crate::conn::Endpoint;
use crate::error::{BenchError, Result};
use crate::{fanout, median, resume, Bench, Phase};

/// The figures compared, in the order printed.
const COMPARED: [&str; 7] = [
    "fanout deliveries/s",
    "fanout peak p50 us",
    "fanout peak p99 us",
    "fanout server CPU ns/delivery",
    "resumes/s",
    "resume handshake p99 us",
    "resume server CPU us/resume",
];

/// One measurement of the compared figures (plaintext or TLS).
type Figures = Vec<(String, f64)>;

/// Phase: fan-out and resumes over TLS beside plaintext.
pub async fn run(bench: &mut Bench) -> Result<()> {
    let phase = Phase::Tls;
    let Some(tls) = bench.tls.clone() else {
        bench.say(
            phase,
            "skipped: it needs the server the benchmark starts with a TLS port (not --target)",
        );
        bench.summarize(format!("{:<38} skipped (--target)", "tls"));
        return Ok(());
    };
    let plain = bench.endpoint.clone();
    let rounds = bench.opts.tls_rounds.max(1) as usize;
    // The fan-out and resume runs below add their own summary lines and figures; the
    // phase reports them itself, so what was there before is put back afterwards.
    let summary = std::mem::take(&mut bench.summary);
    let figures = std::mem::take(&mut bench.figures);
    let measured = measure_rounds(bench, &plain, &tls, rounds).await;
    bench.endpoint = plain;
    bench.summary = summary;
    bench.figures = figures;
    let pairs = measured?;

    bench.say(
        phase,
        format!(
            "over {rounds} rounds: median plaintext, median TLS, ratio TLS/plaintext per round [median]"
        ),
    );
    let find = |list: &Figures, name: &str| list.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    for name in COMPARED {
        let mut plain: Vec<f64> = pairs.iter().filter_map(|(p, _)| find(p, name)).collect();
        let mut over_tls: Vec<f64> = pairs.iter().filter_map(|(_, t)| find(t, name)).collect();
        let mut ratios: Vec<f64> = pairs
            .iter()
            .filter_map(|(p, t)| Some(find(t, name)? / find(p, name)?))
            .filter(|r| r.is_finite())
            .collect();
        if ratios.is_empty() {
            continue;
        }
        let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let (plain, over_tls) = (median(&mut plain), median(&mut over_tls));
        let ratio = median(&mut ratios);
        bench.say(
            phase,
            format!(
                "  {name:<32} {:>12} {:>12}   {} [{}]",
                show(plain),
                show(over_tls),
                shown.join(" "),
                ratio.map_or("-".to_string(), |r| format!("{r:.2}"))
            ),
        );
        if let (Some(plain), Some(over_tls), Some(ratio)) = (plain, over_tls, ratio) {
            bench.summarize(format!(
                "{:<38} {over_tls:.0} vs {plain:.0} plaintext (x{ratio:.2})",
                format!("tls {name}")
            ));
        }
    }
    Ok(())
}

/// `rounds` rounds of fan-out and resumes over both endpoints: each round's figures,
/// plaintext then TLS.
async fn measure_rounds(
    bench: &mut Bench,
    plain: &Endpoint,
    tls: &Endpoint,
    rounds: usize,
) -> Result<Vec<(Figures, Figures)>> {
    let mut pairs = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [plain, tls]
        } else {
            [tls, plain]
        };
        let (mut over_plain, mut over_tls) = (Figures::new(), Figures::new());
        for endpoint in order {
            bench.say(
                Phase::Tls,
                format!(
                    "round {}/{rounds}: fan-out and resumes over {}",
                    round + 1,
                    if endpoint.is_tls() {
                        "TLS"
                    } else {
                        "plaintext"
                    }
                ),
            );
            bench.endpoint = endpoint.clone();
            fanout::run_fanout(bench).await?;
            resume::run(bench).await?;
            let got = std::mem::take(&mut bench.figures);
            if got.is_empty() {
                return Err(BenchError::Protocol("nothing was measured".into()));
            }
            if endpoint.is_tls() {
                over_tls = got;
            } else {
                over_plain = got;
            }
        }
        pairs.push((over_plain, over_tls));
    }
    Ok(pairs)
}
