//! Text to token tensors: the model's own WordPiece tokenizer, padded to the longest row of the
//! batch (not the file's fixed 128) and truncated to the model's `max_seq_len`.

use std::path::Path;

use ndarray::Array2;
use serde::{Deserialize, Serialize};
use tokenizers::{
    EncodeInput, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams,
};

use super::ModelError;

/// One row of text: a sentence, or a pair for pair tasks (entailment, paraphrase, ...).
///
/// On the wire it is either a bare string or `{"text": ..., "text_pair": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TextInput {
    Single(String),
    Pair {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text_pair: Option<String>,
    },
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
}

/// The model's tokenizer with batch-longest padding and truncation at `max_seq_len`.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_seq_len: usize,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and sets padding and truncation for this model.
    pub fn load(path: &Path, max_seq_len: usize) -> Result<Self, ModelError> {
        let tokenizer_error = |context: String| {
            move |source: tokenizers::Error| ModelError::Tokenizer { context, source }
        };
        let mut inner = Tokenizer::from_file(path)
            .map_err(tokenizer_error(format!("loading {}", path.display())))?;
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

    /// Tokenizes a batch: [CLS] text [SEP] (text_pair [SEP]), padded to the longest row.
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
