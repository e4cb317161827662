//! How text becomes search terms, the same way for what is indexed and what is asked: words are
//! folded (lowercase, compatibility-decomposed, accents dropped, as the user directory does), and
//! each Chinese or Japanese character is a word of its own, since those scripts put no spaces
//! between words; a phrase of them then finds any run of characters. The stemmed analyzer adds
//! English stemming on top ("meetings" finds "meeting"), the plain one keeps words as written for
//! phrases and exact matches.

use tantivy::tokenizer::{
    Language, Stemmer, TextAnalyzer, Token, TokenStream, Tokenizer, TokenizerManager,
};
use unicode_normalization::char::is_combining_mark;

use crate::service::user_directory::fold;

/// Name of the plain analyzer in the index's tokenizer manager.
pub const PLAIN: &str = "hearth_plain";
/// Name of the stemmed analyzer.
pub const STEMMED: &str = "hearth_stemmed";

/// Words longer than this (in bytes, folded) are not indexed: base64 blobs and URLs, not words.
const MAX_WORD: usize = 64;

/// Registers both analyzers with an index's tokenizer manager.
pub fn register(manager: &TokenizerManager) {
    manager.register(PLAIN, plain());
    manager.register(STEMMED, stemmed());
}

pub fn plain() -> TextAnalyzer {
    TextAnalyzer::builder(Words::default()).build()
}

pub fn stemmed() -> TextAnalyzer {
    TextAnalyzer::builder(Words::default())
        .filter(Stemmer::new(Language::English))
        .build()
}

/// Whether `c` is written without spaces between words (Han, Hiragana, Katakana).
fn unspaced(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0x20000..=0x2FFFF) // CJK Extensions B and later
}

/// The words of `text`, each with its byte range in `text`.
pub fn spans(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if unspaced(c) {
            if let Some(s) = start.take() {
                out.push((s, i));
            }
            out.push((i, i + c.len_utf8()));
        } else if c.is_alphanumeric() || (start.is_some() && is_combining_mark(c)) {
            start.get_or_insert(i);
        } else if let Some(s) = start.take() {
            out.push((s, i));
        }
    }
    if let Some(s) = start {
        out.push((s, text.len()));
    }
    out
}

/// The folded words of `text` with their byte ranges, as the index sees them.
pub fn words(text: &str) -> Vec<(String, usize, usize)> {
    spans(text)
        .into_iter()
        .filter_map(|(from, to)| {
            let word = fold(&text[from..to]);
            (!word.is_empty() && word.len() <= MAX_WORD).then_some((word, from, to))
        })
        .collect()
}

/// The tokenizer behind both analyzers (see the module comment).
#[derive(Clone, Default)]
pub struct Words {
    tokens: Vec<Token>,
}

pub struct WordStream<'a> {
    tokens: &'a mut Vec<Token>,
    next: usize,
}

impl Tokenizer for Words {
    type TokenStream<'a> = WordStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> WordStream<'a> {
        self.tokens.clear();
        for (position, (word, from, to)) in words(text).into_iter().enumerate() {
            self.tokens.push(Token {
                offset_from: from,
                offset_to: to,
                position,
                text: word,
                position_length: 1,
            });
        }
        WordStream {
            tokens: &mut self.tokens,
            next: 0,
        }
    }
}

impl TokenStream for WordStream<'_> {
    fn advance(&mut self) -> bool {
        self.next += 1;
        self.next <= self.tokens.len()
    }

    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

/// The terms `text` gives with `analyzer`, in order.
pub fn terms(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

/// One part of a search term: a word, or words that must appear in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Clause {
    Word(String),
    Phrase(Vec<String>),
}

/// The clauses of a search term: words, and phrases in double quotes. A "word" that folds into
/// several (e-mail, 会议) must match as a phrase. Every clause must match.
pub fn clauses(search_term: &str) -> Vec<Clause> {
    let mut out = Vec::new();
    let mut push = |words: Vec<String>| match words.len() {
        0 => {}
        1 => out.extend(words.into_iter().map(Clause::Word)),
        _ => out.push(Clause::Phrase(words)),
    };
    let fold_words = |s: &str| words(s).into_iter().map(|(w, ..)| w).collect::<Vec<_>>();
    // Even parts are outside quotes, odd parts inside; an unclosed quote runs to the end.
    for (i, part) in search_term.split('"').enumerate() {
        if i % 2 == 1 {
            push(fold_words(part));
        } else {
            for chunk in part.split_whitespace() {
                push(fold_words(chunk));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_folded_and_unspaced_scripts_split_by_character() {
        let got: Vec<String> = words("Zoë's CAFÉ, 会议记录 ok")
            .into_iter()
            .map(|(w, ..)| w)
            .collect();
        assert_eq!(got, ["zoe", "s", "cafe", "会", "议", "记", "录", "ok"]);
    }

    #[test]
    fn spans_point_into_the_original_text() {
        let text = "Héllo wörld";
        let got: Vec<&str> = spans(text).into_iter().map(|(a, b)| &text[a..b]).collect();
        assert_eq!(got, ["Héllo", "wörld"]);
    }

    #[test]
    fn quotes_make_phrases_and_compound_words_are_phrases() {
        assert_eq!(
            clauses(r#"budget "Quarterly Report" e-mail"#),
            vec![
                Clause::Word("budget".into()),
                Clause::Phrase(vec!["quarterly".into(), "report".into()]),
                Clause::Phrase(vec!["e".into(), "mail".into()]),
            ]
        );
        assert_eq!(clauses("  \"\" ... "), vec![]);
        assert_eq!(
            clauses("\"unclosed phrase"),
            vec![Clause::Phrase(vec!["unclosed".into(), "phrase".into()])]
        );
    }

    #[test]
    fn stemming_brings_forms_of_a_word_together() {
        let mut s = stemmed();
        assert_eq!(terms(&mut s, "Meetings"), terms(&mut s, "meeting"));
        let mut p = plain();
        assert_ne!(terms(&mut p, "Meetings"), terms(&mut p, "meeting"));
    }
}
