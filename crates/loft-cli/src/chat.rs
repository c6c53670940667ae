//! `loft chat`: an interactive, multi-turn conversation. The KV cache keeps the conversation so far; each turn
//! only runs the tokens that changed.

use std::io::{BufRead, Write};

use loft::chat_template::{ChatTemplate, Message};
use loft::engine::{Backend, Cpu};
use loft::infer::GenerateOptions;
use loft::model::{LoadedModel, Runner};
use loft::Error;

use crate::generate::{chat_template, stream, SamplingArgs};
use crate::model_args::{announce, Device, DeviceArgs, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// A system message for the whole conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(args: Args) -> loft::Result<()> {
    args.sampling.check()?;
    let device = args.device.open()?;
    let loaded = args.model.load()?;
    let template = chat_template(&loaded)?;
    let opts = args.sampling.options(&loaded);
    match &device {
        Device::Cpu => converse(&Cpu, &loaded, &template, &opts, args.system),
        Device::Gpu(gpu) => converse(gpu.as_ref(), &loaded, &template, &opts, args.system),
    }
}

/// The conversation on `backend`, turn by turn from stdin, until /exit or the end of input.
fn converse<B: Backend>(
    backend: &B,
    loaded: &LoadedModel,
    template: &ChatTemplate,
    opts: &GenerateOptions,
    system: Option<String>,
) -> loft::Result<()> {
    // The context the model allows; the cache starts small and doubles as the conversation grows.
    let limit = loaded.model.config.max_position_embeddings;
    let runner = Runner::new(backend, &loaded.model)?;
    announce(backend);
    let mut cache = runner.cache(limit.min(1024))?;
    let mut cached: Vec<u32> = Vec::new(); // the ids whose keys/values are in the cache
    let mut messages: Vec<Message> = Vec::new();
    let reset = |messages: &mut Vec<Message>| {
        messages.clear();
        if let Some(s) = &system {
            messages.push(Message { role: "system".into(), content: s.clone() });
        }
    };
    reset(&mut messages);
    eprintln!("type a message; /reset starts over, /exit or Ctrl-D leaves");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let Some(line) = lines.next() else { break };
        let line = line.map_err(|e| Error::io("<stdin>", e))?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                reset(&mut messages);
                continue;
            }
            _ => {}
        }
        messages.push(Message { role: "user".into(), content: line });
        let text = template.render(&messages, true)?;
        let ids = loaded.tokenizer.encode(&text, false, true);
        let need = ids.len() + opts.max_new_tokens;
        if need > limit {
            eprintln!("the conversation is too long for the context ({} tokens); starting over", ids.len());
            messages.truncate(messages.len() - 1);
            reset(&mut messages);
            continue;
        }
        if need > cache.capacity {
            let grown = need.max(2 * cache.capacity).min(limit);
            runner.reserve(&mut cache, grown)?;
        }
        // Reuse the cached prefix; run only what differs.
        let keep = cached.iter().zip(&ids).take_while(|(a, b)| a == b).count().min(ids.len() - 1);
        cache.len = keep;
        cached.truncate(keep);
        let (answer, stats) = stream(&runner, &loaded.tokenizer, &ids[keep..], opts, &mut cache)?;
        println!();
        cached.extend_from_slice(&ids[keep..]);
        cached.extend_from_slice(&answer[..answer.len().saturating_sub(1)]);
        cached.truncate(cache.len);
        eprintln!("[{} tokens, {:.1} tok/s]", stats.generated_tokens, stats.decode_tokens_per_second());
        let reply = loaded.tokenizer.decode(&answer, true);
        messages.push(Message { role: "assistant".into(), content: reply.trim().to_string() });
    }
    Ok(())
}
