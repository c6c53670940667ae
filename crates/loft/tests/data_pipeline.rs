//! The training-data stage end to end: dataset files of each format to records, records to text with trained
//! spans, text to ids and labels on the default model's tokenizer, and labels to padded or packed batches;
//! plus the errors users see for bad data.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use loft::data::batch::shuffled_order;
use loft::data::source::{read_file, read_records, Record, SourceOptions};
use loft::data::template::{Example, Format, Formatter, SpecialTokens};
use loft::data::tokenize::{tokenize, tokenize_all, TokenizeOptions, Tokenized, IGNORE};
use loft::data::{split_train_validation, Batcher, Packing};
use loft::tokenizer::Tokenizer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn records(name: &str) -> Vec<Record> {
    read_records(&[fixture(name)], &SourceOptions::default()).unwrap()
}

/// The default model's tokenizer.
fn tokenizer() -> Tokenizer {
    Tokenizer::from_gguf(&gguf::GgufFile::open(common::default_model()).unwrap()).unwrap()
}

/// ChatML-style tokens without a model, for tests that only look at text.
fn chatml_tokens() -> SpecialTokens {
    SpecialTokens {
        bos_token: Some("<|im_start|>".into()),
        eos_token: Some("<|im_end|>".into()),
        chat_template: loft::chat_template::ChatTemplate::named("chatml").map(str::to_string),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn error_text<T: std::fmt::Debug>(r: loft::Result<T>) -> String {
    let e = r.unwrap_err();
    match e.hint() {
        Some(h) => format!("{e}\nhint: {h}"),
        None => e.to_string(),
    }
}

fn opts(max_seq_length: usize) -> TokenizeOptions {
    TokenizeOptions { max_seq_length, train_on_responses_only: true, split_long: false }
}

// ---- sources ----

#[test]
fn jsonl_records_carry_file_and_line() {
    let recs = records("alpaca.jsonl");
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1].line, 2);
    assert_eq!(recs[1].fields["input"], "Good morning");
    assert!(recs[0].location().ends_with("alpaca.jsonl:1"));
}

#[test]
fn json_array_elements_know_their_line() {
    let recs = records("chat.json");
    assert_eq!(recs.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 6]);
}

#[test]
fn csv_header_quotes_and_newlines() {
    let recs = records("articles.csv");
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].fields["body"], "One, two");
    assert_eq!(recs[1].fields["title"], "Second");
    assert_eq!(recs[1].fields["body"], "Line one\nline \"two\"");
    assert_eq!((recs[0].line, recs[1].line), (2, 3));
}

#[test]
fn csv_ragged_row_names_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "bad.csv", "a,b\n1,2\n3\n");
    let msg = error_text(read_file(&p, &SourceOptions::default()));
    assert!(msg.contains("bad.csv:3: expected 2 fields (as the header names: a, b), found 1"), "{msg}");
}

#[test]
fn text_files_whole_or_by_paragraph() {
    let whole = records("book.txt");
    assert_eq!(whole.len(), 1);
    assert!(whole[0].fields["text"].as_str().unwrap().starts_with("First paragraph,\nstill first."));
    let paras =
        read_records(&[fixture("book.txt")], &SourceOptions { split_paragraphs: true, ..Default::default() }).unwrap();
    assert_eq!(paras.len(), 2);
    assert_eq!(paras[0].fields["text"], "First paragraph,\nstill first.");
    assert_eq!(paras[1].fields["text"], "Second paragraph.");
    assert_eq!((paras[0].line, paras[1].line), (1, 5));
}

#[test]
fn globs_expand_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.jsonl", "{\"x\": 2}\n");
    write(dir.path(), "a.jsonl", "{\"x\": 1}\n\n{\"x\": 3}\n");
    write(dir.path(), "c.txt", "not matched");
    let recs = read_records(&[dir.path().join("*.jsonl")], &SourceOptions::default()).unwrap();
    let xs: Vec<i64> = recs.iter().map(|r| r.fields["x"].as_i64().unwrap()).collect();
    assert_eq!(xs, vec![1, 3, 2]);
    assert_eq!(recs[1].line, 3);
    let msg = error_text(read_records(&[dir.path().join("*.parquet")], &SourceOptions::default()));
    assert!(msg.contains("no file matches"), "{msg}");
}

#[test]
fn malformed_jsonl_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n");
    let msg = error_text(read_records(&[p], &SourceOptions::default()));
    assert!(msg.contains("bad.jsonl:2:23: "), "{msg}");
    assert!(msg.contains("EOF while parsing"), "{msg}");
    assert!(!msg.contains('\n') || msg.lines().nth(1).unwrap().starts_with("hint:"), "{msg}");
}

#[test]
fn jsonl_line_that_is_not_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "arr.jsonl", "[1, 2]\n");
    let msg = error_text(read_records(&[p], &SourceOptions::default()));
    assert!(msg.contains("arr.jsonl:1: expected a JSON object, found an array"), "{msg}");
}

#[test]
fn empty_dataset_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "empty.jsonl", "\n\n");
    let msg = error_text(read_records(&[p], &SourceOptions::default()));
    assert!(msg.starts_with("the dataset is empty: no records in "), "{msg}");
    assert!(msg.contains("empty.jsonl"), "{msg}");
}

// ---- templates ----

#[test]
fn text_template_fills_fields_and_appends_eos() {
    let recs = records("articles.csv");
    let f = Formatter::new(Format::Text { template: "# {title}\n\n{body}".into() }, &chatml_tokens(), true).unwrap();
    f.check(&recs[0]).unwrap();
    let ex = f.format(&recs[0]).unwrap();
    assert_eq!(ex.segments, vec![("# First\n\nOne, two<|im_end|>".to_string(), true)]);
}

#[test]
fn unknown_placeholder_is_named_with_the_fields() {
    let recs = records("articles.csv");
    let f = Formatter::new(Format::Text { template: "{titel}: {body}".into() }, &chatml_tokens(), true).unwrap();
    let msg = error_text(f.check(&recs[0]));
    assert!(msg.contains("unknown placeholder {titel}"), "{msg}");
    assert!(msg.contains("have fields: body, title"), "{msg}");
    assert!(msg.contains("hint: did you mean {title}?"), "{msg}");
}

#[test]
fn missing_field_names_record_and_present_fields() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "a.jsonl",
        "{\"instruction\": \"x\", \"output\": \"y\"}\n{\"instruction\": \"x\", \"answer\": \"y\"}\n",
    );
    let recs = read_records(&[p], &SourceOptions::default()).unwrap();
    let f = Formatter::new(Format::Alpaca, &chatml_tokens(), true).unwrap();
    f.format(&recs[0]).unwrap();
    let msg = error_text(f.format(&recs[1]));
    assert!(msg.contains("a.jsonl:2: missing field `output`; the record has: answer, instruction"), "{msg}");
}

#[test]
fn alpaca_prompts_with_and_without_input() {
    let recs = records("alpaca.jsonl");
    let f = Formatter::new(Format::Alpaca, &chatml_tokens(), true).unwrap();
    let ex = f.format(&recs[0]).unwrap();
    assert_eq!(
        ex.segments,
        vec![
            (
                "Below is an instruction that describes a task. Write a response that appropriately completes the \
                 request.\n\n### Instruction:\nName a primary colour.\n\n### Response:\n"
                    .to_string(),
                false
            ),
            ("Red.<|im_end|>".to_string(), true),
        ]
    );
    let ex = f.format(&recs[1]).unwrap();
    assert_eq!(
        ex.segments[0].0,
        "Below is an instruction that describes a task, paired with an input that provides further context. Write \
         a response that appropriately completes the request.\n\n### Instruction:\nTranslate to French.\n\n\
         ### Input:\nGood morning\n\n### Response:\n"
    );
    assert_eq!(ex.segments[1], ("Bonjour<|im_end|>".to_string(), true));
}

#[test]
fn chat_messages_and_sharegpt_train_assistant_turns() {
    let recs = records("chat.json");
    let f = Formatter::new(Format::Chat { chat_template: Some("chatml".into()) }, &chatml_tokens(), true).unwrap();
    let ex = f.format(&recs[0]).unwrap();
    assert_eq!(
        ex.segments,
        vec![
            ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n".to_string(), false),
            ("Hello! How can I help?<|im_end|>".to_string(), true),
            ("\n".to_string(), false),
        ]
    );
    let ex = f.format(&recs[1]).unwrap();
    let trained: Vec<&str> = ex.segments.iter().filter(|s| s.1).map(|s| s.0.as_str()).collect();
    assert_eq!(trained, vec!["4<|im_end|>", "6<|im_end|>"]);
    assert!(ex.text().starts_with("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?"));
}

#[test]
fn eos_goes_after_the_last_response_when_the_template_ends_turns_otherwise() {
    let recs = records("chat.json");
    let tokens = SpecialTokens { eos_token: Some("</s>".into()), ..chatml_tokens() };
    let f = Formatter::new(Format::Chat { chat_template: Some("chatml".into()) }, &tokens, true).unwrap();
    let ex = f.format(&recs[1]).unwrap();
    let trained: Vec<&str> = ex.segments.iter().filter(|s| s.1).map(|s| s.0.as_str()).collect();
    assert_eq!(trained, vec!["4<|im_end|>", "6<|im_end|></s>"]);
}

#[test]
fn chat_without_a_template_or_messages() {
    let tokens = SpecialTokens { chat_template: None, ..chatml_tokens() };
    let msg = error_text(Formatter::new(Format::Chat { chat_template: None }, &tokens, true));
    assert!(msg.contains("the model has no chat template"), "{msg}");
    let recs = records("alpaca.jsonl");
    let f = Formatter::new(Format::Chat { chat_template: None }, &chatml_tokens(), true).unwrap();
    let msg = error_text(f.format(&recs[0]));
    assert!(msg.contains("alpaca.jsonl:1: missing field `messages` (or ShareGPT `conversations`)"), "{msg}");
}

// ---- tokenizing ----

/// The prompt's labels are -100, the response's are its ids, and the trained span ends with EOS.
#[test]
fn alpaca_on_the_default_tokenizer() {
    let tok = tokenizer();
    let recs = records("alpaca.jsonl");
    let f = Formatter::new(Format::Alpaca, &SpecialTokens::from_tokenizer(&tok), true).unwrap();
    let ex = f.format(&recs[0]).unwrap();
    let t = tokenize(&tok, &ex, &opts(1024));
    let prompt = tok.encode(&ex.segments[0].0, false, false);
    let response = tok.encode("Red.", false, false);
    assert!(!tok.add_bos(), "SmolLM2 adds no BOS");
    assert_eq!(t.ids, [prompt.clone(), response.clone(), vec![2]].concat());
    // Encoding the whole text at once gives the same ids: segment boundaries split no token.
    assert_eq!(t.ids, tok.encode(&ex.text(), true, true));
    assert!(t.labels[..prompt.len()].iter().all(|&l| l == IGNORE));
    let trained: Vec<u32> = t.labels[prompt.len()..].iter().map(|&l| l as u32).collect();
    assert_eq!(trained, [response, vec![2]].concat());
    assert_eq!(tok.decode(&trained, false), "Red.<|im_end|>");
    assert_eq!(*t.labels.last().unwrap(), 2, "EOS is trained");
}

#[test]
fn chat_on_the_default_tokenizer_uses_its_template() {
    let tok = tokenizer();
    let recs = records("chat.json");
    let f = Formatter::new(Format::Chat { chat_template: None }, &SpecialTokens::from_tokenizer(&tok), true).unwrap();
    let ex = f.format(&recs[0]).unwrap();
    // SmolLM2's template adds its default system prompt when the conversation has none.
    let expected_text = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
                         Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I \
                         help?<|im_end|>\n";
    assert_eq!(ex.text(), expected_text);
    let t = tokenize(&tok, &ex, &opts(1024));
    assert_eq!(t.ids, tok.encode(expected_text, false, true));
    assert_eq!(t.ids[0], 1, "<|im_start|> is BOS, written by the template");
    assert_eq!(t.ids.iter().filter(|&&i| i == 1).count(), 3, "no BOS added in front of the template's");
    let trained: Vec<u32> = t.labels.iter().filter(|&&l| l >= 0).map(|&l| l as u32).collect();
    assert_eq!(tok.decode(&trained, false), "Hello! How can I help?<|im_end|>");
    // The trained span is contiguous, starts right after "<|im_start|>assistant\n" and ends with id 2.
    let first = t.labels.iter().position(|&l| l >= 0).unwrap();
    let last = t.labels.iter().rposition(|&l| l >= 0).unwrap();
    assert_eq!(last - first + 1, trained.len());
    assert_eq!(tok.decode(&t.ids[..first], false).rsplit("<|im_start|>").next(), Some("assistant\n"));
    assert_eq!(t.labels[last], 2);
    assert_eq!(last, t.ids.len() - 2, "the newline after <|im_end|> is not trained");
    assert_eq!(tok.decode(&t.ids[last + 1..], false), "\n");
}

#[test]
fn eos_ends_every_trained_response() {
    let tok = tokenizer();
    let recs = records("chat.json");
    let f = Formatter::new(Format::Chat { chat_template: None }, &SpecialTokens::from_tokenizer(&tok), true).unwrap();
    for r in &recs {
        let t = tokenize(&tok, &f.format(r).unwrap(), &opts(1024));
        // A trained span's end is followed by an untrained token or the end of the example.
        let ends: Vec<usize> =
            (0..t.labels.len()).filter(|&i| t.labels[i] >= 0 && t.labels.get(i + 1).is_none_or(|&l| l < 0)).collect();
        assert!(!ends.is_empty());
        assert!(ends.iter().all(|&i| t.labels[i] == 2 && t.ids[i] == 2), "{ends:?}");
    }
    assert_eq!(recs.len(), 2);
}

#[test]
fn responses_only_off_trains_every_token() {
    let tok = tokenizer();
    let f = Formatter::new(Format::Alpaca, &SpecialTokens::from_tokenizer(&tok), true).unwrap();
    let ex = f.format(&records("alpaca.jsonl")[1]).unwrap();
    let masked = tokenize(&tok, &ex, &opts(1024));
    let all = tokenize(
        &tok,
        &ex,
        &TokenizeOptions { max_seq_length: 1024, train_on_responses_only: false, split_long: false },
    );
    assert_eq!(masked.ids, all.ids);
    assert_eq!(all.labels, all.ids.iter().map(|&i| i as i32).collect::<Vec<_>>());
    assert!(masked.labels.iter().filter(|&&l| l == IGNORE).count() > 20);
}

#[test]
fn truncation_and_dropping_are_counted() {
    let tok = tokenizer();
    let f = Formatter::new(Format::Alpaca, &SpecialTokens::from_tokenizer(&tok), true).unwrap();
    let recs = records("alpaca.jsonl");
    let examples: Vec<Example> = recs.iter().map(|r| f.format(r).unwrap()).collect();
    let lens: Vec<usize> = examples.iter().map(|e| tokenize(&tok, e, &opts(usize::MAX)).ids.len()).collect();
    let prompt0 = tok.encode(&examples[0].segments[0].0, false, true).len();
    // Cut the first example two tokens into its response; the second (longer prompt) loses its response.
    let max = prompt0 + 2;
    assert!(lens[1] > max && tok.encode(&examples[1].segments[0].0, false, true).len() >= max);
    let (kept, stats) = tokenize_all(&tok, &examples, &opts(max)).unwrap();
    assert_eq!((stats.examples, stats.truncated, stats.dropped), (2, 2, 1));
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].ids.len(), max);
    assert_eq!(stats.target_tokens, 2);

    let msg = error_text(tokenize_all(&tok, &examples, &opts(prompt0)));
    assert!(msg.contains("no example has a trained token within max_seq_length"), "{msg}");
    assert!(msg.contains("2 examples, 2 truncated, all dropped"), "{msg}");
    assert!(msg.contains("hint: raise max_seq_length"), "{msg}");
}

// ---- split, shuffle, batches ----

fn toy(n: usize, len: usize, first_id: u32) -> Tokenized {
    let ids: Vec<u32> = (0..len as u32).map(|i| first_id + i).collect();
    let labels = ids.iter().enumerate().map(|(i, &id)| if i < n { IGNORE } else { id as i32 }).collect();
    Tokenized { ids, labels }
}

#[test]
fn split_is_deterministic_by_seed() {
    let items: Vec<u32> = (0..100).collect();
    let (train, val) = split_train_validation(items.clone(), 0.1, 42).unwrap();
    assert_eq!((train.len(), val.len()), (90, 10));
    let again = split_train_validation(items.clone(), 0.1, 42).unwrap();
    assert_eq!((train.clone(), val.clone()), again);
    let other = split_train_validation(items.clone(), 0.1, 43).unwrap();
    assert_ne!(val, other.1);
    let mut all = [train, val].concat();
    all.sort();
    assert_eq!(all, items);
    assert_eq!(split_train_validation(vec![1, 2, 3], 0.01, 0).unwrap().1.len(), 1);
    assert_eq!(split_train_validation(vec![1, 2, 3], 0.0, 0).unwrap().1.len(), 0);
    assert!(split_train_validation(vec![1], 1.0, 0).is_err());
}

#[test]
fn shuffle_is_deterministic_by_seed_and_epoch() {
    assert_eq!(shuffled_order(50, 1, 0), shuffled_order(50, 1, 0));
    assert_ne!(shuffled_order(50, 1, 0), shuffled_order(50, 1, 1));
    assert_ne!(shuffled_order(50, 1, 0), shuffled_order(50, 2, 0));
    let examples: Vec<Tokenized> = (0..10).map(|i| toy(1, 3, 100 * i)).collect();
    let batcher =
        Batcher { batch_size: 4, max_seq_length: 8, packing: Packing::Padded, pad_id: 0, seed: 5, shuffle: true };
    let a = batcher.epoch(&examples, 0);
    let b = batcher.epoch(&examples, 0);
    assert_eq!(
        a.iter().map(|x| x.input_ids.clone()).collect::<Vec<_>>(),
        b.iter().map(|x| x.input_ids.clone()).collect::<Vec<_>>()
    );
    assert_eq!(a.iter().map(|x| x.b).collect::<Vec<_>>(), vec![4, 4, 2]);
}

#[test]
fn padded_rows_shift_labels_and_mask_padding() {
    let examples = vec![toy(1, 3, 10), toy(2, 5, 20)];
    let batcher =
        Batcher { batch_size: 2, max_seq_length: 8, packing: Packing::Padded, pad_id: 2, seed: 0, shuffle: false };
    let batches = batcher.epoch(&examples, 0);
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!((b.b, b.t), (2, 5));
    assert_eq!(b.input_ids, vec![10, 11, 12, 2, 2, 20, 21, 22, 23, 24]);
    assert_eq!(b.targets, vec![11, 12, -100, -100, -100, -100, 22, 23, 24, -100]);
    assert_eq!(b.positions, vec![0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
    assert!(b.doc_start.is_none());
}

#[test]
fn packing_resets_positions_and_never_targets_across_examples() {
    // lengths 4, 3, 5 in rows of 8: [4 + 3 + pad 1], [5 + pad 3]
    let examples = vec![toy(0, 4, 10), toy(1, 3, 20), toy(0, 5, 30)];
    let batcher =
        Batcher { batch_size: 2, max_seq_length: 8, packing: Packing::Packed, pad_id: 2, seed: 0, shuffle: false };
    let batches = batcher.epoch(&examples, 0);
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!((b.b, b.t), (2, 8));
    assert_eq!(b.input_ids, vec![10, 11, 12, 13, 20, 21, 22, 2, 30, 31, 32, 33, 34, 2, 2, 2]);
    assert_eq!(b.positions, vec![0, 1, 2, 3, 0, 1, 2, 0, 0, 1, 2, 3, 4, 0, 1, 2]);
    assert_eq!(b.doc_start.as_deref().unwrap(), &[0, 0, 0, 0, 4, 4, 4, 7, 0, 0, 0, 0, 0, 5, 5, 5]);
    assert_eq!(b.targets, vec![11, 12, 13, -100, 21, 22, -100, -100, 31, 32, 33, 34, -100, -100, -100, -100]);
    // No target is an id from another example: each target is the next id inside its own document.
    let ds = b.doc_start.as_deref().unwrap();
    for i in 0..b.b * b.t {
        if b.targets[i] >= 0 {
            assert_eq!(ds[i], ds[i + 1], "target at {i} crosses a document boundary");
            assert_eq!(b.targets[i] as u32, b.input_ids[i + 1]);
        }
    }
}

#[test]
fn packing_a_real_dataset_keeps_every_target() {
    let tok = tokenizer();
    let f = Formatter::new(Format::Chat { chat_template: None }, &SpecialTokens::from_tokenizer(&tok), true).unwrap();
    let mut recs = records("chat.json");
    recs.extend(records("chat.json"));
    let examples: Vec<Example> = recs.iter().map(|r| f.format(r).unwrap()).collect();
    let (kept, stats) = tokenize_all(&tok, &examples, &opts(256)).unwrap();
    let batcher =
        Batcher { batch_size: 2, max_seq_length: 256, packing: Packing::Packed, pad_id: 2, seed: 3, shuffle: true };
    let batches = batcher.epoch(&kept, 0);
    let n: usize = batches.iter().map(|b| b.n_targets()).sum();
    assert_eq!(n, stats.target_tokens);
    let padded = Batcher { packing: Packing::Padded, ..batcher }.epoch(&kept, 0);
    assert_eq!(padded.iter().map(|b| b.n_targets()).sum::<usize>(), stats.target_tokens);
    assert!(batches.iter().map(|b| b.b).sum::<usize>() < padded.iter().map(|b| b.b).sum::<usize>());
}

/// A tokenizer that asks for BOS (Llama-3's, from llama.cpp's vocabulary tests): BOS goes first, untrained,
/// unless the rendered text already starts with it.
#[test]
fn bos_is_added_once_where_the_tokenizer_asks() {
    let path = common::LLAMA_CPP.join("models/ggml-vocab-llama-bpe.gguf");
    let tok = Tokenizer::from_gguf(&gguf::GgufFile::open(&path).unwrap()).unwrap();
    assert!(tok.add_bos());
    let (bos, eos) = (tok.bos_id().unwrap(), tok.eos_id().unwrap());
    let tokens = SpecialTokens::from_tokenizer(&tok);

    let f = Formatter::new(Format::Text { template: "{title}: {body}".into() }, &tokens, true).unwrap();
    let ex = f.format(&records("articles.csv")[0]).unwrap();
    let t = tokenize(&tok, &ex, &opts(64));
    assert_eq!(t.ids[0], bos);
    assert_eq!(t.labels[0], IGNORE);
    assert_eq!(*t.ids.last().unwrap(), eos);
    assert_eq!(&t.ids[1..t.ids.len() - 1], tok.encode("First: One, two", false, false).as_slice());
    assert!(t.labels[1..].iter().zip(&t.ids[1..]).all(|(&l, &i)| l == i as i32), "CPT text is trained in full");

    let f = Formatter::new(Format::Chat { chat_template: Some("llama3".into()) }, &tokens, true).unwrap();
    let ex = f.format(&records("chat.json")[0]).unwrap();
    assert!(ex.text().starts_with("<|begin_of_text|><|start_header_id|>user"));
    let t = tokenize(&tok, &ex, &opts(256));
    assert_eq!(t.ids.iter().filter(|&&i| i == bos).count(), 1, "the template's BOS, not a second one");
    let trained: Vec<u32> = t.labels.iter().filter(|&&l| l >= 0).map(|&l| l as u32).collect();
    assert_eq!(tok.decode(&trained, false), "Hello! How can I help?<|eot_id|><|end_of_text|>");
}

#[test]
fn json_array_syntax_error_names_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "bad.json", "[\n  {\"a\": 1},\n  {\"a\": 2,}\n]\n");
    let msg = error_text(read_records(&[p], &SourceOptions::default()));
    assert!(msg.contains("bad.json:3: "), "{msg}");
}

#[test]
fn prepare_runs_every_stage() {
    let tok = tokenizer();
    let (examples, stats) = loft::data::prepare(
        &[fixture("alpaca.jsonl")],
        &SourceOptions::default(),
        Format::Alpaca,
        true,
        &tok,
        &opts(512),
    )
    .unwrap();
    assert_eq!(examples.len(), 2);
    assert_eq!((stats.examples, stats.truncated, stats.dropped), (2, 0, 0));
    assert!(examples.iter().all(|e| *e.labels.last().unwrap() == 2));
    assert!(loft::data::pad_id(&tok) < tok.vocab_size() as u32);

    let msg = error_text(loft::data::prepare(
        &[fixture("articles.csv")],
        &SourceOptions::default(),
        Format::Text { template: "{heading}\n{body}".into() },
        true,
        &tok,
        &opts(512),
    ));
    assert!(msg.contains("unknown placeholder {heading}"), "{msg}");
}

/// Writes a small Snappy-compressed Parquet file as Hugging Face datasets lay them out (one column per field,
/// strings as UTF8 byte arrays, a nullable column).
fn write_alpaca_parquet(path: &Path) {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;

    let schema = parquet::schema::parser::parse_message_type(
        "message schema { REQUIRED BYTE_ARRAY instruction (UTF8); OPTIONAL BYTE_ARRAY input (UTF8); \
         REQUIRED BYTE_ARRAY output (UTF8); REQUIRED INT64 id; }",
    )
    .unwrap();
    let props = WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let strings = |v: &[&str]| v.iter().map(|s| ByteArray::from(*s)).collect::<Vec<_>>();
    let mut index = 0;
    while let Some(mut col) = group.next_column().unwrap() {
        match index {
            0 => col.typed::<ByteArrayType>().write_batch(&strings(&["Say hi.", "Add."]), None, None),
            1 => col.typed::<ByteArrayType>().write_batch(&strings(&["1 + 2"]), Some(&[0, 1]), None),
            2 => col.typed::<ByteArrayType>().write_batch(&strings(&["Hi!", "3"]), None, None),
            _ => col.typed::<Int64Type>().write_batch(&[7, 8], None, None),
        }
        .unwrap();
        col.close().unwrap();
        index += 1;
    }
    group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn parquet_rows_are_records() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("train-00000-of-00001.parquet");
    write_alpaca_parquet(&p);
    let recs = read_records(&[dir.path().join("train-*.parquet")], &SourceOptions::default()).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!((recs[0].line, recs[1].line), (1, 2));
    assert_eq!(recs[0].fields["input"], serde_json::Value::Null);
    assert_eq!(recs[1].fields["input"], "1 + 2");
    assert_eq!(recs[1].fields["id"], 8);
    let f = Formatter::new(Format::Alpaca, &chatml_tokens(), true).unwrap();
    let ex = f.format(&recs[0]).unwrap();
    assert!(ex.segments[0].0.starts_with("Below is an instruction that describes a task. Write"));
    assert_eq!(ex.segments[1], ("Hi!<|im_end|>".to_string(), true));
    assert!(f.format(&recs[1]).unwrap().segments[0].0.contains("### Input:\n1 + 2\n\n"));

    let bad = write(dir.path(), "bad.parquet", "PAR1 not really");
    let msg = error_text(read_records(&[bad], &SourceOptions::default()));
    assert!(msg.contains("bad.parquet: not a readable Parquet file"), "{msg}");
}

#[test]
fn sharegpt_unknown_speaker_and_unterminated_csv_quote() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "c.jsonl", "{\"conversations\": [{\"from\": \"bot\", \"value\": \"x\"}]}\n");
    let recs = read_records(&[p], &SourceOptions::default()).unwrap();
    let f = Formatter::new(Format::Chat { chat_template: Some("chatml".into()) }, &chatml_tokens(), true).unwrap();
    let msg = error_text(f.format(&recs[0]));
    assert!(msg.contains("c.jsonl:1: `conversations[0].from` is `bot`, expected human, gpt or system"), "{msg}");

    let p = write(dir.path(), "q.csv", "a,b\n1,\"open\n");
    let msg = error_text(read_records(&[p], &SourceOptions::default()));
    assert!(msg.contains("q.csv:2: unterminated quoted field"), "{msg}");
}

#[test]
fn conversation_without_assistant_turn_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "u.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"hello?\"}]}\n");
    let recs = read_records(&[p], &SourceOptions::default()).unwrap();
    let f = Formatter::new(Format::Chat { chat_template: Some("chatml".into()) }, &chatml_tokens(), true).unwrap();
    let msg = error_text(f.format(&recs[0]));
    assert!(msg.contains("u.jsonl:1: the conversation has no assistant turn to train on"), "{msg}");
}

#[test]
fn split_long_keeps_every_token_in_pieces() {
    let tok = tokenizer();
    let f = Formatter::new(Format::Alpaca, &SpecialTokens::from_tokenizer(&tok), true).unwrap();
    let examples: Vec<Example> = records("alpaca.jsonl").iter().map(|r| f.format(r).unwrap()).collect();
    let whole = tokenize(&tok, &examples[1], &opts(usize::MAX));
    let o = TokenizeOptions { max_seq_length: 16, train_on_responses_only: false, split_long: true };
    let (pieces, stats) = tokenize_all(&tok, &examples[1..2], &o).unwrap();
    assert_eq!(pieces.len(), whole.ids.len().div_ceil(16));
    assert_eq!((stats.truncated, stats.dropped), (1, 0));
    assert!(pieces.iter().all(|p| p.ids.len() <= 16));
    assert_eq!(pieces.iter().flat_map(|p| p.ids.clone()).collect::<Vec<_>>(), whole.ids);
    // EOS, at the very end of the example, is in the last piece's labels.
    assert_eq!(pieces.last().unwrap().labels.last().copied(), tok.eos_id().map(|e| e as i32));
}
