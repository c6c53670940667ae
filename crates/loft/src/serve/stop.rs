//! OpenAI's `stop` strings on streamed text: generation ends where one first appears, the answer ends just before
//! it, and text that might be the start of one is held back until the next pieces decide.

/// What [`StopText::push`] lets out.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Text that can be sent now (possibly empty).
    Text(String),
    /// A stop string appeared: the text before it that had not been sent yet, and generation ends.
    Stopped(String),
}

pub struct StopText {
    stops: Vec<String>,
    /// Everything generated so far (up to the stop string once one is found).
    text: String,
    /// Bytes of `text` already let out.
    sent: usize,
}

impl StopText {
    /// Empty strings are left out (they would match everywhere; the request's validation refuses them first).
    pub fn new(stops: Vec<String>) -> Self {
        StopText { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), text: String::new(), sent: 0 }
    }

    pub fn push(&mut self, piece: &str) -> Pushed {
        self.text.push_str(piece);
        // A match cannot start before `sent`: any text that could begin one was held back.
        let found = self.stops.iter().filter_map(|s| self.text[self.sent..].find(s.as_str())).min();
        if let Some(at) = found {
            let end = self.sent + at;
            let out = self.text[self.sent..end].to_string();
            self.text.truncate(end);
            self.sent = end;
            return Pushed::Stopped(out);
        }
        let safe = self.text.len() - self.held_back();
        let out = self.text[self.sent..safe].to_string();
        self.sent = safe;
        Pushed::Text(out)
    }

    /// The text held back at the end of generation (it never became a stop string).
    pub fn finish(&mut self) -> String {
        let out = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        out
    }

    /// Bytes at the end of the unsent text that are a proper prefix of some stop string (the longest such tail).
    fn held_back(&self) -> usize {
        let tail = &self.text[self.sent..];
        let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let first = tail.len().saturating_sub(longest.saturating_sub(1));
        (first..tail.len())
            .filter(|&i| tail.is_char_boundary(i))
            .find(|&i| self.stops.iter().any(|s| s.len() > tail.len() - i && s.starts_with(&tail[i..])))
            .map_or(0, |i| tail.len() - i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`, returning what was let out, piece by piece, and whether a stop string ended it.
    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut s = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for p in pieces {
            match s.push(p) {
                Pushed::Text(t) => out.push(t),
                Pushed::Stopped(t) => {
                    out.push(t);
                    return (out, true);
                }
            }
        }
        out.push(s.finish());
        (out, false)
    }

    #[test]
    fn no_stop_strings_let_everything_out_at_once() {
        assert_eq!(run(&[], &["Hel", "lo"]), (vec!["Hel".into(), "lo".into(), "".into()], false));
    }

    #[test]
    fn a_stop_string_across_pieces_is_held_back_and_cut() {
        let (out, stopped) = run(&["\n\nUser:"], &["Sure.", "\n", "\nUs", "er:", " more"]);
        assert!(stopped);
        assert_eq!(out, vec!["Sure.", "", "", ""]);
    }

    #[test]
    fn a_false_start_is_let_out_once_decided() {
        let (out, stopped) = run(&["END"], &["a E", "N", "d", "!"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "a ENd!");
        assert_eq!(out, vec!["a ", "", "ENd", "!", ""]);
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_multibyte_text_is_cut_on_characters() {
        let (out, stopped) = run(&["ß!", "xyz", "é"], &["aaé", "b"]);
        assert!(stopped);
        assert_eq!(out.concat(), "aa");
        let (out, stopped) = run(&["éa"], &["é", "é", "b"]);
        assert!(!stopped);
        assert_eq!(out, vec!["", "é", "éb", ""]);
    }

    #[test]
    fn text_held_at_the_end_comes_out_in_finish() {
        let (out, stopped) = run(&["STOP"], &["go ST"]);
        assert!(!stopped);
        assert_eq!(out, vec!["go ", "ST"]);
    }
}
