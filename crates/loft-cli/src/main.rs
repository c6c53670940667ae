//! The `loft` command line: parse, dispatch, render errors. Each subcommand lives in its own file.

mod bench;
mod chat;
mod eval;
mod export;
mod generate;
mod inspect;
mod merge;
mod model_args;
mod plot;
mod serve;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fine-tune Llama-family models with LoRA and QLoRA on the CPU; run, merge and export them.
#[derive(Parser)]
#[command(name = "loft", version)]
struct Cli {
    /// Worker threads for the math (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one prompt, streaming the answer to stdout (speed and counts go to stderr).
    Generate(generate::Args),
    /// Talk to a model, turn by turn (type /exit or press Ctrl-D to leave, /reset to start over).
    Chat(chat::Args),
    /// Serve OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models) for a model and its LoRA adapters,
    /// each applied unmerged to the requests that name it.
    ///
    /// One copy of the base in memory serves every name. Up to --max-concurrent requests decode together on the
    /// CPU (continuous batching: one step runs a token of each, every request with its own KV cache and adapter,
    /// joining and leaving between steps) within --kv-budget; the rest wait in a queue (--queue, --queue-timeout).
    /// Plain HTTP/1.1 on 127.0.0.1 by default; GET /health needs no key; GET / is a web page with the training
    /// runs under --runs and side-by-side chat. README's "Serve" section lists the OpenAI fields honoured.
    Serve(serve::Args),
    /// Fine-tune with LoRA from a TOML config: CPT or IFT, checkpoints, metrics.jsonl, TensorBoard.
    Train(train::Args),
    /// Mean next-token loss and perplexity of a text file's first tokens.
    Eval(eval::Args),
    /// Draw the loss curves of training runs (their metrics.jsonl) into a PNG or SVG: --out FILE.png|svg.
    Plot(plot::Args),
    /// Show what a model, a PEFT adapter or checkpoint, or (with --data) a training set holds.
    Inspect(inspect::Args),
    /// Merge a LoRA adapter into its base and write a Hugging Face folder (--adapter, --out, --dtype).
    Merge(merge::Args),
    /// Write files for llama.cpp and Ollama: `loft export gguf` (the model, an adapter merged in) or `gguf-adapter`.
    #[command(subcommand)]
    Export(export::Command),
    /// Reproducible throughput figures.
    #[command(subcommand)]
    Bench(bench::Command),
}

fn main() -> ExitCode {
    // `loft inspect … | head` should end quietly, as other command-line tools do, not panic on a closed pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    // Rayon's default is one thread per CPU (0). The stack is the main thread's, since commands run on the pool.
    let threads = cli.threads.map_or(0, |n| n.max(1));
    if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(threads).stack_size(8 << 20).build_global() {
        eprintln!("error: cannot start {threads} threads: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        // The server's own threads wait on sockets; its decoding steps enter the pool themselves.
        Command::Serve(a) => serve::run(a),
        // Every other command runs on a thread of the pool, so that the parallel regions it starts (hundreds per
        // decoded token) are split among the pool's threads directly instead of each waking the pool from outside
        // and putting this thread to sleep until it is done (`bench decode` on 2 threads: 370,000 context switches
        // fewer, 40 % less CPU time for the same tokens).
        command => rayon::scope(|_| match command {
            Command::Generate(a) => generate::run(a),
            Command::Chat(a) => chat::run(a),
            Command::Serve(a) => serve::run(a),
            Command::Train(a) => train::run(a),
            Command::Eval(a) => eval::run(a),
            Command::Plot(a) => plot::run(a),
            Command::Inspect(a) => inspect::run(a),
            Command::Merge(a) => merge::run(a),
            Command::Export(c) => export::run(c),
            Command::Bench(c) => bench::run(c),
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            render_error(&e);
            ExitCode::FAILURE
        }
    }
}

/// `error: …`, then each cause on a `Caused by:` line, then `hint: …`. A cause whose text the line above already
/// shows (an io error after `path: No such file…`) is not repeated.
fn render_error(e: &loft::Error) {
    eprint!("{}", error_report(e));
}

fn error_report(e: &loft::Error) -> String {
    let mut out = format!("error: {e}\n");
    let mut above = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !above.contains(&text) {
            out += &format!("Caused by: {text}\n");
        }
        above = text;
        source = cause.source();
    }
    if let Some(hint) = e.hint() {
        out += &format!("hint: {hint}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_report;
    use loft::Error;

    #[test]
    fn causes_come_one_a_line_between_the_error_and_the_hint() {
        let io = std::io::Error::other("connection reset");
        let e = Error::caused("cannot download 'config.json'", io).at("org/model").with_hint("check the network");
        assert_eq!(
            error_report(&e),
            "error: org/model: cannot download 'config.json'\nCaused by: connection reset\nhint: check the network\n"
        );
    }

    #[test]
    fn a_cause_the_message_already_shows_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let e = Error::io("/m.gguf", io);
        assert_eq!(error_report(&e), "error: /m.gguf: No such file or directory (os error 2)\n");
    }
}
