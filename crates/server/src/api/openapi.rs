//! `/openapi.json`: the committed description (docs/openapi.json) with the limits in force written
//! into it, so a client or a contract tester reads the bounds the server applies: text lengths,
//! item counts, and once the model is loaded z's length d, a prototype's width H, and whether a
//! tune request may start from upstream codes.
//!
//! What JSON Schema cannot say is checked by the server alone and documented in the description:
//! a body `name` equal to the path's, unique label names, ‖z‖ ≤ max_z_norm, and the token budget.

use serde_json::{Value, json};

use crate::Options;

/// "Has a character that is not blank", as Rust's `char::is_whitespace` counts blanks (JSON
/// Schema's `\S` follows ECMAScript's whitespace, which differs on U+0085 and U+FEFF).
const NON_BLANK: &str = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// The committed description, as shipped.
const COMMITTED: &str = include_str!("../../../../docs/openapi.json");

/// The model's sizes and the subspace's names, once they are loaded.
pub struct Sizes {
    pub d: usize,
    pub hidden: usize,
    /// The subspace's name and full id: what an upload's `subspace` may say.
    pub subspace: [String; 2],
    /// Whether the subspace carries upstream codes with their label descriptions, which a tune
    /// request's "upstream" start needs.
    pub upstream_codes: bool,
}

/// The description with `options`' limits (and, when known, the model's sizes) in it.
pub fn render(options: &Options, sizes: Option<Sizes>) -> Value {
    let mut doc: Value =
        serde_json::from_str(COMMITTED).expect("docs/openapi.json is JSON. This is a bug.");
    let schemas = &mut doc["components"]["schemas"];
    let max_inputs = options.max_inputs.min(options.batch.max_rows);
    let text = json!({"type": "string", "minLength": 1, "maxLength": options.max_text_chars, "pattern": NON_BLANK});
    schemas["TextInput"]["oneOf"][0] = text.clone();
    for field in ["text", "text_pair"] {
        let described =
            schemas["TextInput"]["oneOf"][1]["properties"][field]["description"].clone();
        let mut schema = text.clone();
        if !described.is_null() {
            schema["description"] = described;
        }
        schemas["TextInput"]["oneOf"][1]["properties"][field] = schema;
    }
    for request in ["PredictRequest", "EmbedRequest"] {
        schemas[request]["properties"]["inputs"]["maxItems"] = json!(max_inputs);
    }
    for field in ["text", "text_pair"] {
        schemas["LabeledText"]["properties"][field] = text.clone();
    }
    let tune = &mut schemas["TuneRequest"]["properties"];
    for list in ["examples", "dev_examples", "test_examples"] {
        tune[list]["maxItems"] = json!(options.tune.max_examples);
    }
    tune["budget"]["properties"]["seconds"]["maximum"] = json!(options.tune.max_seconds);
    tune["labels"]["maxItems"] = json!(options.task_limits.max_labels);
    let limits = &options.task_limits;
    for field in ["name", "description"] {
        schemas["Label"]["properties"][field]["maxLength"] = json!(limits.max_label_chars);
    }
    schemas["TaskUpload"]["properties"]["labels"]["maxItems"] = json!(limits.max_labels);
    let bias = &mut schemas["Head"]["properties"]["bias"];
    bias["maxItems"] = json!(limits.max_labels);
    bias["items"] = json!({"type": "number", "minimum": -limits.max_head_bias, "maximum": limits.max_head_bias});
    let bound = limits.max_z_norm;
    schemas["TaskUpload"]["properties"]["z"]["items"] =
        json!({"type": "number", "minimum": -bound, "maximum": bound});
    if let Some(sizes) = sizes {
        let z = &mut schemas["TaskUpload"]["properties"]["z"];
        z["minItems"] = json!(sizes.d);
        z["maxItems"] = json!(sizes.d);
        schemas["TaskUpload"]["properties"]["subspace"]["enum"] = json!(sizes.subspace);
        let prototype = &mut schemas["Head"]["properties"]["prototypes"]["items"];
        prototype["minItems"] = json!(sizes.hidden);
        prototype["maxItems"] = json!(sizes.hidden);
        if !sizes.upstream_codes {
            let init = &mut schemas["TuneRequest"]["properties"]["init"];
            init["items"]["enum"] = json!(["normal"]);
            init["maxItems"] = json!(1);
            init["default"] = json!(["normal"]);
        }
    }
    doc
}
