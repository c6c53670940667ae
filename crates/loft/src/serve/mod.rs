//! `loft serve` without the HTTP: OpenAI's request and response shapes ([`openai`]), the names served ([`models`]:
//! the base and its adapters, held unmerged), the training runs the web page shows ([`runs`]), `stop` strings on streamed text ([`stop`]), and the continuous batch
//! that answers requests together, each with its own KV cache and adapter ([`scheduler`]). The HTTP server itself
//! (axum) lives in the CLI, crates/loft-cli/src/serve.rs.

pub mod models;
pub mod openai;
pub mod runs;
pub mod scheduler;
pub mod stop;

pub use models::{Models, Target};
pub use openai::{ApiError, FinishReason, Prompt, Request, ResponseHead, Usage};
pub use scheduler::{Event, Finished, Job, Limits, Scheduler, Sink};
