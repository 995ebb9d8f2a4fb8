//! A model as an ONNX graph that a runtime steps one character at a time: the embedding as a
//! `Gather`, each recurrent layer as ONNX's own `GRU` (`linear_before_reset = 1`), `LSTM` or
//! `RNN` operator with its gates reordered from PyTorch's, the dense layer as `MatMul` + `Add`.
//!
//! Inputs: `ids` int64 [seq, batch]; `h0` float [layers, batch, H] (and `c0` for an LSTM).
//! Outputs: `logits` float [seq, batch, V]; `hn` [layers, batch, H] (and `cn`), the states to
//! feed back for the next characters. The vocabulary (a JSON array of the characters in id
//! order) and the model's config are in the metadata.

#[allow(clippy::all, missing_docs, rustdoc::all)]
mod proto;

use anyhow::{Context, Result};
use prost::Message;

use charrnn_core::checkpoint::Checkpoint;
use charrnn_core::model::to_host;
use charrnn_core::ops::cells::Cell;
use proto::tensor_proto::DataType;
use proto::tensor_shape_proto::{dimension, Dimension};
use proto::type_proto;
use proto::{
    attribute_proto::AttributeType, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The ONNX opset the graph uses (Squeeze takes its axes as an input from 13 on).
const OPSET: i64 = 17;
/// The ONNX IR version of opset 17.
const IR_VERSION: i64 = 8;

/// The ONNX model of `ckpt`, serialised.
pub fn to_bytes(ckpt: &Checkpoint) -> Result<Vec<u8>> {
    Ok(graph_model(ckpt)?.encode_to_vec())
}

/// PyTorch's gate blocks (in its order) as ONNX's: the blocks of PyTorch's order to take, in
/// ONNX's order.
fn onnx_gate_order(cell: Cell) -> &'static [usize] {
    match cell {
        // PyTorch r, z, n → ONNX z, r, h.
        Cell::Gru => &[1, 0, 2],
        // PyTorch i, f, g, o → ONNX i, o, f, c.
        Cell::Lstm => &[0, 3, 1, 2],
        Cell::Rnn => &[0],
    }
}

/// `m` (gate blocks of `hidden` rows each, row-major) with its blocks in `order`.
fn reorder(m: &[f32], hidden: usize, order: &[usize]) -> Vec<f32> {
    let block = m.len() / order.len();
    debug_assert_eq!(block % hidden, 0);
    order.iter().flat_map(|&g| m[g * block..(g + 1) * block].iter().copied()).collect()
}

fn graph_model(ckpt: &Checkpoint) -> Result<ModelProto> {
    let model = &ckpt.model;
    let c = &model.config;
    let (h, v, e, layers, cell) = (c.rnn_units, c.vocab_size, c.embedding_dim, c.layers, c.cell);
    let gates = cell.gates();
    let order = onnx_gate_order(cell);
    let op = match cell {
        Cell::Gru => "GRU",
        Cell::Lstm => "LSTM",
        Cell::Rnn => "RNN",
    };
    let lstm = cell == Cell::Lstm;
    let mut g = Graph::default();

    g.float("embedding", &[v, e], to_host(&model.embedding)?);
    g.node("Gather", &["embedding", "ids"], &["x0"], vec![]);
    g.int64("squeeze_axes", &[1], vec![1]);
    let mut finals_h = Vec::new();
    let mut finals_c = Vec::new();
    for l in 0..layers {
        let p = model.layer(l);
        let input = if l == 0 { e } else { h };
        g.float(&format!("W{l}"), &[1, gates * h, input], reorder(&to_host(&p.w_ih)?, h, order));
        g.float(&format!("R{l}"), &[1, gates * h, h], reorder(&to_host(&p.w_hh)?, h, order));
        let mut bias = reorder(&to_host(&p.b_ih)?, h, order);
        bias.extend(reorder(&to_host(&p.b_hh)?, h, order));
        g.float(&format!("B{l}"), &[1, 2 * gates * h], bias);
        g.int64(&format!("layer{l}"), &[1], vec![l as i64]);
        g.node("Gather", &["h0", &format!("layer{l}")], &[&format!("h0_{l}")], vec![int_attr("axis", 0)]);
        let mut inputs = vec![
            format!("x{l}"),
            format!("W{l}"),
            format!("R{l}"),
            format!("B{l}"),
            String::new(),
            format!("h0_{l}"),
        ];
        let mut outputs = vec![format!("y{l}"), format!("hn_{l}")];
        if lstm {
            g.node("Gather", &["c0", &format!("layer{l}")], &[&format!("c0_{l}")], vec![int_attr("axis", 0)]);
            inputs.push(format!("c0_{l}"));
            outputs.push(format!("cn_{l}"));
            finals_c.push(format!("cn_{l}"));
        }
        let mut attributes = vec![int_attr("hidden_size", h as i64)];
        if cell == Cell::Gru {
            // PyTorch's (and cuDNN's) GRU applies the reset gate after the recurrent product.
            attributes.push(int_attr("linear_before_reset", 1));
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
        g.node(op, &inputs, &outputs, attributes);
        // Y is [seq, directions = 1, batch, H].
        g.node("Squeeze", &[&format!("y{l}"), "squeeze_axes"], &[&format!("x{}", l + 1)], vec![]);
        finals_h.push(format!("hn_{l}"));
    }
    // The dense layer, its weight stored transposed for MatMul: [H, V].
    g.float("dense_weight_t", &[h, v], to_host(&model.dense.weight.t()?)?);
    g.float("dense_bias", &[v], to_host(&model.dense.bias)?);
    g.node("MatMul", &[&format!("x{layers}"), "dense_weight_t"], &["projected"], vec![]);
    g.node("Add", &["projected", "dense_bias"], &["logits"], vec![]);
    let concat = |g: &mut Graph, parts: &[String], out: &str| {
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        g.node("Concat", &parts, &[out], vec![int_attr("axis", 0)]);
    };
    concat(&mut g, &finals_h, "hn");
    let state =
        |name: &str| value(name, DataType::Float, &[Dim::Fixed(layers), Dim::Named("batch"), Dim::Fixed(h)]);
    let mut inputs =
        vec![value("ids", DataType::Int64, &[Dim::Named("seq"), Dim::Named("batch")]), state("h0")];
    let mut outputs = vec![
        value("logits", DataType::Float, &[Dim::Named("seq"), Dim::Named("batch"), Dim::Fixed(v)]),
        state("hn"),
    ];
    if lstm {
        concat(&mut g, &finals_c, "cn");
        inputs.push(state("c0"));
        outputs.push(state("cn"));
    }
    let vocab: Vec<String> = ckpt.vocab.chars().iter().map(|ch| ch.to_string()).collect();
    let metadata = [
        ("vocab", serde_json::to_string(&vocab)?),
        ("config", serde_json::to_string(c)?),
        ("epoch", ckpt.provenance.epoch.to_string()),
    ];
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        producer_name: Some("charrnn".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!("charrnn {} model: {layers} × {h}; ids [seq, batch] → logits", cell.name())),
        metadata_props: (metadata.into_iter())
            .map(|(k, v)| StringStringEntryProto { key: Some(k.into()), value: Some(v) })
            .collect(),
        graph: Some(GraphProto {
            name: Some("charrnn".into()),
            node: g.nodes,
            initializer: g.initializers,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The nodes and constant tensors, in the order they are added.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Graph {
    fn node(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            name: Some(format!("{op}_{}", self.nodes.len())),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute,
            ..Default::default()
        });
    }

    fn float(&mut self, name: &str, dims: &[usize], data: Vec<f32>) {
        debug_assert_eq!(data.len(), dims.iter().product::<usize>());
        self.constant(name, dims, DataType::Float, data.iter().flat_map(|x| x.to_le_bytes()).collect());
    }

    fn int64(&mut self, name: &str, dims: &[usize], data: Vec<i64>) {
        self.constant(name, dims, DataType::Int64, data.iter().flat_map(|x| x.to_le_bytes()).collect());
    }

    /// A constant tensor: little-endian values of `elem`, as ONNX's raw data holds them.
    fn constant(&mut self, name: &str, dims: &[usize], elem: DataType, raw: Vec<u8>) {
        self.initializers.push(TensorProto {
            name: Some(name.into()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(elem as i32),
            raw_data: Some(raw),
            ..Default::default()
        });
    }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(i),
        ..Default::default()
    }
}

/// A dimension of a graph input or output: fixed, or named and chosen by the caller.
enum Dim {
    Fixed(usize),
    Named(&'static str),
}

fn value(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = (dims.iter())
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Named(s) => dimension::Value::DimParam(s.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Writes the ONNX model of `ckpt` to `file`.
pub fn write(file: &std::path::Path, ckpt: &Checkpoint) -> Result<usize> {
    let bytes = to_bytes(ckpt)?;
    charrnn_core::atomic::write(file, &bytes).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(bytes.len())
}
