//! Text to token tensors: the model's own WordPiece tokenizer, padded to the longest row of the
//! batch (not the file's fixed 128) and truncated to the model's `max_seq_len`.

use std::path::Path;

use ndarray::{Array2, Axis, s};
use serde::{Deserialize, Serialize};
use tokenizers::{
    EncodeInput, PaddingDirection, PaddingParams, PaddingStrategy, PostProcessor, Tokenizer,
    TruncationParams,
};

use super::ModelError;

/// One row of text: a sentence, or a pair for pair tasks (entailment, paraphrase, ...).
///
/// On the wire it is either a bare string or `{"text": ..., "text_pair": ...}`. An object with
/// another field (`textpair`, say) or a `null` pair is refused rather than read as one sentence:
/// a misspelt pair would otherwise get a confident answer to another question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum TextInput {
    Single(String),
    Pair {
        text: String,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "a_string"
        )]
        text_pair: Option<String>,
    },
}

/// A field that may be left out but, when given, is a string (not `null`).
fn a_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    String::deserialize(deserializer).map(Some)
}

impl TextInput {
    /// A single sentence.
    pub fn single(text: impl Into<String>) -> Self {
        Self::Single(text.into())
    }

    /// A sentence pair; `None` for the second part is a single sentence.
    pub fn pair(text: impl Into<String>, text_pair: Option<String>) -> Self {
        match text_pair {
            Some(second) => Self::Pair {
                text: text.into(),
                text_pair: Some(second),
            },
            None => Self::Single(text.into()),
        }
    }

    /// The first (or only) text.
    pub fn text(&self) -> &str {
        match self {
            Self::Single(text) | Self::Pair { text, .. } => text,
        }
    }

    /// The second text of a pair.
    pub fn text_pair(&self) -> Option<&str> {
        match self {
            Self::Single(_) => None,
            Self::Pair { text_pair, .. } => text_pair.as_deref(),
        }
    }

    /// Characters in all parts, for limits.
    pub fn char_len(&self) -> usize {
        self.text().chars().count() + self.text_pair().map_or(0, |t| t.chars().count())
    }
}

/// A batch of token rows, padded to its longest row: each array is [rows, seq].
#[derive(Debug, Clone)]
pub struct Tokens {
    pub input_ids: Array2<i64>,
    pub attention_mask: Array2<i64>,
    pub token_type_ids: Array2<i64>,
}

impl Tokens {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.input_ids.nrows()
    }

    /// Padded sequence length.
    pub fn seq_len(&self) -> usize {
        self.input_ids.ncols()
    }

    /// Each row's real tokens (its attention mask's ones).
    pub fn lengths(&self) -> Vec<usize> {
        self.attention_mask
            .rows()
            .into_iter()
            .map(|mask| mask.iter().filter(|&&m| m != 0).count())
            .collect()
    }

    /// The rows `rows`, cut to their first `seq` positions (padding is on the right, so no real
    /// token is lost when `seq` is at least their longest length).
    pub fn select(&self, rows: &[usize], seq: usize) -> Self {
        let take = |a: &Array2<i64>| a.select(Axis(0), rows).slice(s![.., ..seq]).to_owned();
        Self {
            input_ids: take(&self.input_ids),
            attention_mask: take(&self.attention_mask),
            token_type_ids: take(&self.token_type_ids),
        }
    }

    /// Batches tokenized apart as one: their rows in order, each padded on the right (id 0, mask
    /// 0) to the longest.
    pub fn concat(parts: &[&Tokens]) -> Self {
        let rows = parts.iter().map(|t| t.rows()).sum();
        let seq = parts.iter().map(|t| t.seq_len()).max().unwrap_or(0);
        let mut joined = Self {
            input_ids: Array2::zeros((rows, seq)),
            attention_mask: Array2::zeros((rows, seq)),
            token_type_ids: Array2::zeros((rows, seq)),
        };
        let mut start = 0;
        for part in parts {
            let (end, width) = (start + part.rows(), part.seq_len());
            let region = s![start..end, ..width];
            joined.input_ids.slice_mut(region).assign(&part.input_ids);
            joined
                .attention_mask
                .slice_mut(region)
                .assign(&part.attention_mask);
            joined
                .token_type_ids
                .slice_mut(region)
                .assign(&part.token_type_ids);
            start = end;
        }
        joined
    }
}

/// The model's tokenizer with batch-longest padding and truncation at `max_seq_len`.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_seq_len: usize,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and sets padding and truncation at `max_seq_len`, which must leave
    /// a pair's special tokens (`[CLS] a [SEP] b [SEP]`) at least one token of text and be at most
    /// `limit` (the model's own).
    pub fn load(path: &Path, max_seq_len: usize, limit: usize) -> Result<Self, ModelError> {
        let tokenizer_error = |context: String| {
            move |source: tokenizers::Error| ModelError::Tokenizer { context, source }
        };
        let mut inner = Tokenizer::from_file(path)
            .map_err(tokenizer_error(format!("loading {}", path.display())))?;
        // The tokenizers crate subtracts the special tokens from the limit unchecked.
        let special = inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        let least = special + 1;
        if !(least..=limit).contains(&max_seq_len) {
            let asked = max_seq_len;
            return Err(ModelError::SeqLen {
                asked,
                least,
                limit,
            });
        }
        // The file ships `padding: Fixed(128)`; pad to the longest row instead.
        let mut padding = inner
            .get_padding()
            .cloned()
            .unwrap_or_else(PaddingParams::default);
        padding.strategy = PaddingStrategy::BatchLongest;
        // Pads on the right, whatever the file says: a batch can then be cut to a shorter length
        // (classifier::embed_rows) without losing real tokens.
        padding.direction = PaddingDirection::Right;
        inner.with_padding(Some(padding));
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_len,
                ..Default::default()
            }))
            .map_err(tokenizer_error(format!(
                "truncating at {max_seq_len} tokens"
            )))?;
        Ok(Self { inner, max_seq_len })
    }

    /// The longest row, in tokens, after truncation.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// Tokenizes a batch: `[CLS] text [SEP]` (`text_pair [SEP]`), padded to the longest row.
    pub fn encode(&self, inputs: &[TextInput]) -> Result<Tokens, ModelError> {
        if inputs.is_empty() {
            return Err(ModelError::EmptyBatch);
        }
        let encode_inputs: Vec<EncodeInput> = inputs
            .iter()
            .map(|input| match input.text_pair() {
                Some(pair) => (input.text().to_string(), pair.to_string()).into(),
                None => input.text().to_string().into(),
            })
            .collect();
        let encodings = self
            .inner
            .encode_batch(encode_inputs, true)
            .map_err(|source| ModelError::Tokenizer {
                context: format!("encoding {} texts", inputs.len()),
                source,
            })?;
        let rows = encodings.len();
        let seq = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0);
        let mut tokens = Tokens {
            input_ids: Array2::zeros((rows, seq)),
            attention_mask: Array2::zeros((rows, seq)),
            token_type_ids: Array2::zeros((rows, seq)),
        };
        for (row, encoding) in encodings.iter().enumerate() {
            let fields = [
                encoding.get_ids(),
                encoding.get_attention_mask(),
                encoding.get_type_ids(),
            ];
            let targets = [
                &mut tokens.input_ids,
                &mut tokens.attention_mask,
                &mut tokens.token_type_ids,
            ];
            for (values, target) in fields.into_iter().zip(targets) {
                for (col, &value) in values.iter().enumerate() {
                    target[[row, col]] = i64::from(value);
                }
            }
        }
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use ndarray::array;

    #[test]
    fn an_input_is_a_string_or_a_text_with_an_optional_pair_and_nothing_else() {
        let read = |json: &str| serde_json::from_str::<TextInput>(json);
        assert_eq!(read(r#""a""#).unwrap(), TextInput::single("a"));
        assert_eq!(read(r#"{"text": "a"}"#).unwrap().text_pair(), None);
        let pair = read(r#"{"text": "a", "text_pair": "b"}"#).unwrap();
        assert_eq!((pair.text(), pair.text_pair()), ("a", Some("b")));
        for refused in [
            r#"{"text": "a", "textpair": "b"}"#,
            r#"{"text": "a", "text_pair": null}"#,
            r#"{"text_pair": "b"}"#,
        ] {
            assert!(read(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn batches_tokenized_apart_join_padded_on_the_right_and_select_back() {
        let part = |ids: Array2<i64>| Tokens {
            attention_mask: ids.mapv(|id| i64::from(id != 0)),
            token_type_ids: Array2::zeros(ids.dim()),
            input_ids: ids,
        };
        let (short, long) = (
            part(array![[101, 7, 102]]),
            part(array![[101, 8, 9, 102], [101, 5, 102, 0]]),
        );
        let joined = Tokens::concat(&[&short, &long]);
        assert_eq!(
            joined.input_ids,
            array![[101, 7, 102, 0], [101, 8, 9, 102], [101, 5, 102, 0]]
        );
        assert_eq!(joined.lengths(), vec![3, 4, 3]);
        let back = joined.select(&[0, 2], 3);
        assert_eq!(back.input_ids, array![[101, 7, 102], [101, 5, 102]]);
        assert_eq!(back.attention_mask, array![[1, 1, 1], [1, 1, 1]]);
    }

    use super::*;

    #[test]
    fn text_input_reads_a_string_or_a_pair_object() {
        let inputs: Vec<TextInput> =
            serde_json::from_str(r#"["plain", {"text": "a", "text_pair": "b"}, {"text": "only"}]"#)
                .unwrap();
        assert_eq!(inputs[0], TextInput::single("plain"));
        assert_eq!(inputs[1].text_pair(), Some("b"));
        assert_eq!(inputs[2].text(), "only");
        assert_eq!(inputs[2].text_pair(), None);
        assert_eq!(inputs[1].char_len(), 2);
    }
}
