"""Structure: what the model is — layers, graph, attention, activations and weights, which layers matter."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from explain.digest import digest_array
from explain.errors import GlassboxError
from explain.inputs.text import real_length
from explain.output import layer_importance
from explain.output.importance_job import saved_importance
from explain.service.model_locks import hold_model
from explain.structure import activations, attention, attention_summary
from explain.structure import layers as structure
from explain.structure import module_graph as graph
from explain.viz import structure as viz
from explain.viz.attribution import to_display_images
from ui import jobs, state
from ui import workspace as team
from ui.analysis_view import render_importance
from ui.choice import choice_box
from ui.run_view import snapshot_record
from ui.text import escape_markdown

MAX_ATTENTION_INPUTS = 16
MAX_IMPORTANCE_INPUTS = 8


@st.cache_resource(max_entries=16, show_spinner=False)
def _layer_table(model_sha: str, inputs_sha: str, _model, _inputs) -> structure.LayerTable:
    with hold_model(_model):  # probes and FLOP counting hook the model the queue's worker shares
        return structure.build_layer_table(_model, _inputs)


@st.cache_resource(max_entries=16, show_spinner=False)
def _attention(model_sha: str, inputs_sha: str, _model, _inputs) -> attention.AttentionMaps:
    with hold_model(_model):  # hooks on the attention layers
        return attention.capture_attention(_model, _inputs)


def depth_slider(container, label: str, low: int, high: int, value: int, key: str, help: str | None = None) -> int:
    """A depth slider from ``low`` to ``high`` starting at ``value`` (clamped); a model one level deep
    has nothing to choose: its depth is named instead (a slider needs two values)."""
    if high <= low:
        container.caption(f"{label}: {low} (the model has one level of layers)")
        return low
    return container.slider(label, low, high, min(max(value, low), high), key=key, help=help)


st.title("Structure")
team.stop_unless_may_explain()  # the layer table, attention, activations and importance run the model here
ok = False
with state.error_boundary("Loading the model and inputs"):
    model = state.current_model()
    state.stop_if_causal_lm(model)  # explained by `python -m explain generate`
    batch = state.current_inputs()
    inputs = batch.array
    inputs_sha = digest_array(inputs)
    with st.spinner("Running the model once to measure every layer…"):
        table = _layer_table(model.sha256, inputs_sha, model, inputs)
    ok = True
if not ok:
    st.stop()

st.caption(f"{escape_markdown(model.name)} · {model.format} · {model.modality} · {table.total_parameters:,} parameters · "
           f"{table.total_flops:,} FLOPs for a batch of {table.batch_size} "
           f"({table.total_flops / max(table.batch_size, 1):,.0f} per input)")
save_slot = st.container()  # the Save run button, filled once the Layers tab has its table
tab_layers, tab_graph, tab_attention, tab_acts, tab_importance = st.tabs(
    ["Layers", "Graph", "Attention", "Activations & weights", "Layer importance"])

# -- Layers --------------------------------------------------------------------
with tab_layers:
    c1, c2 = st.columns([1, 2])
    depth = c1.slider("Depth", 0, max(table.max_depth, 1), structure.default_depth(table.rows), key="gb_struct_depth",
                      help="Show modules down to this nesting level (at first, what the repeated blocks are made of); "
                           "parents include their children's numbers.")
    query = c2.text_input("Filter by name or type", key="gb_struct_filter", placeholder="e.g. conv, attn, Linear")
    rows = structure.filter_rows(table.rows, max_depth=depth, query=query)
    frame = structure.layer_frame(table, max_depth=depth, query=query)  # the Overview's and a saved run's table
    st.dataframe(frame, hide_index=True, width="stretch", key="gb_layer_table", column_config={
        "parameters": st.column_config.NumberColumn(format="localized"),
        "trainable": st.column_config.NumberColumn(format="localized"),
        "frozen": st.column_config.NumberColumn(format="localized"),
        structure.FLOPS_COLUMN: st.column_config.NumberColumn(format="localized"),
        "FLOP %": st.column_config.ProgressColumn(format="%.1f%%", min_value=0, max_value=100),
    })
    st.caption(f"{len(rows)} of {len(table.rows)} modules. Output shapes and FLOPs per input (the batch "
               "dimension dropped); FLOPs as torch's FlopCounterMode counts them (a multiply-add = 2; "
               "element-wise ops = 0). Click a header to sort.")
    for note in table.notes:
        st.info(escape_markdown(note))
    flop_rows = structure.flop_chart_rows(rows, table.total_flops)  # the shown layers, none counted twice
    if flop_rows:
        st.plotly_chart(viz.figure_flops(flop_rows), width="stretch", key="gb_flops_chart")

with save_slot:  # saves the table the Layers tab shows (its depth and filter)
    team.render_save_run("structure", model, lambda name, version: snapshot_record(
        "structure", name, version, f"Structure of {model.name}", inputs, {"Layers": frame}), key="structure")

# -- Graph ---------------------------------------------------------------------
with tab_graph:
    c1, c2 = st.columns([1, 2])
    gdepth = c1.slider("Collapse below depth", 0, max(table.max_depth, 1), min(2, table.max_depth),
                       key="gb_graph_depth")
    shown = [r.name for r in structure.filter_rows(table.rows, max_depth=gdepth)]
    chosen = c2.selectbox("Module", shown, format_func=lambda n: n or "(model)", key="gb_graph_node")
    g = graph.build_module_graph(table, max_depth=gdepth, selected=chosen)
    if g.truncated:
        st.warning(f"Only the first {len(g.shown)} modules are drawn; choose a smaller depth to see the whole level.")
    st.graphviz_chart(g.dot, width="content")
    if chosen is not None:
        info = graph.describe_module(table, chosen)
        row = info["row"]
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("Type", escape_markdown(row.type))
        m2.metric("Parameters", f"{row.parameters:,}",
                  help=f"{100 * (info['parameter_share'] or 0):.1f}% of the model; {row.frozen:,} frozen")
        m3.metric("FLOPs", "unknown" if row.flops is None else f"{row.flops:,}")
        m4.metric(structure.SHAPE_COLUMN.capitalize(), structure.format_shape(row.output_shape))
        act = info["activation"]
        if act is not None and act.mean is not None:
            st.caption(f"Output mean {act.mean:.4g}, std {act.std:.4g}, zeros {100 * act.zero_fraction:.1f}%, "
                       f"dead units {100 * (act.dead_fraction or 0):.1f}% · {info['submodules']} submodules")

# -- Attention -----------------------------------------------------------------
with tab_attention:
    reason = attention.attention_unavailable_reason(model)
    maps = None
    if reason:
        st.info(escape_markdown(reason))
    else:
        try:
            with st.spinner("Capturing attention…"):
                maps = _attention(model.sha256, inputs_sha, model, inputs[:MAX_ATTENTION_INPUTS])
        except GlassboxError as exc:
            st.info(escape_markdown(exc.message))
    if maps is not None:
        with state.error_boundary("Drawing attention"):
            n_inputs = maps.weights.shape[1]
            def _describe(i: int) -> str:
                text = " ".join(batch.display[i]) if model.modality == "text" and i < len(batch.display) else ""
                return f"#{i} {text[:60]}"
            c1, c2, c3 = st.columns([2, 1, 1])
            idx = choice_box(c1, "Input", list(range(n_inputs)), format_func=_describe, key="gb_att_input")
            ids = maps.inputs[idx] if maps.inputs is not None and maps.inputs.ndim == 2 else None
            length = real_length(ids, model.spec) if ids is not None else maps.num_tokens
            patches = (attention.patch_grid(maps.num_tokens, model.spec.input_shape)
                       if model.modality == "image" and maps.num_tokens == maps.weights.shape[4] else None)
            tokens = (attention_summary.label_tokens(model.spec, ids[:length]) if ids is not None
                      else patches.labels() if patches is not None else [str(i) for i in range(length)])
            layer = c2.selectbox("Layer", list(range(maps.num_layers)), format_func=lambda i: maps.layer_names[i],
                                 key="gb_att_layer")
            head = c3.selectbox("Head", list(range(maps.num_heads)), key="gb_att_head")
            w = maps.weights[:, idx, :, :length, :length]  # [layer, head, q, k]
            w_drawn, labels = attention_summary.pool_attention(w, tokens)
            if len(labels) < length:
                st.caption(f"{length} tokens pooled into {len(labels)} blocks for drawing (keys summed, queries averaged).")
            st.caption(f"{maps.num_layers} layers × {maps.num_heads} heads · {escape_markdown(maps.source)} · rows are queries, "
                       "columns the keys they attend to.")
            for note in maps.notes:
                st.caption(escape_markdown(note))
            st.plotly_chart(viz.figure_attention_grid(w_drawn, maps.layer_names, labels, selected=(layer, head)),
                            width="stretch", key="gb_att_grid")
            left, right = st.columns(2)
            left.plotly_chart(viz.figure_attention(w_drawn[layer, head], labels,
                                                   title=f"{maps.layer_names[layer]} · head {head}"),
                              width="stretch")
            lengths = np.array([real_length(r, model.spec) for r in maps.inputs]) if ids is not None else None
            if maps.num_tokens == maps.weights.shape[4]:
                roll = attention_summary.compute_rollout(maps.weights[:, [idx]])[0, :length, :length]
                roll_drawn, _ = attention_summary.pool_attention(roll, tokens)
                right.plotly_chart(viz.figure_attention(roll_drawn, labels, title="Attention rollout across layers"),
                                   width="stretch")
                if patches is not None:  # a Vision Transformer: the rollout row of [CLS] over the image
                    _, heat = attention.image_rollout(maps.weights[:, idx], patches, *model.spec.input_shape[-2:])
                    image = to_display_images(maps.inputs[idx : idx + 1], model.spec)[0]
                    source = "[CLS]" if patches.extra else "all positions (mean)"
                    st.plotly_chart(viz.figure_image_heatmap(image, heat, f"What {source} draws on after all layers, "
                                                            f"by patch ({patches.rows}×{patches.cols})",
                                                            label="rollout share"),
                                    width="content", key="gb_att_rollout_image")
                    st.caption(f"Attention rollout of {source} to the {patches.rows * patches.cols} patches, each "
                               f"patch's share spread over its square of the input (brightest: the largest share, "
                               f"{float(heat.max()):.3f}).")
                else:
                    st.plotly_chart(viz.figure_token_weights(roll[0], tokens, title=f"What position 0 ({tokens[0]}) "
                                                             "draws on after all layers (rollout row)"),
                                    width="stretch")
            st.markdown("**Heads** (averaged over inputs and real query positions)")
            st.dataframe(pd.DataFrame(attention_summary.summarise_heads(maps.weights, maps.layer_names, lengths)),
                         hide_index=True, width="stretch", key="gb_head_table", column_config={
                             "entropy": st.column_config.NumberColumn(format="%.3f", help="nats; 0 = one key"),
                             "normalised_entropy": st.column_config.NumberColumn(format="%.3f", help="1 = uniform"),
                             "max_weight": st.column_config.NumberColumn(format="%.3f"),
                             "first_token_weight": st.column_config.NumberColumn(format="%.3f"),
                         })

# -- Activations & weights -------------------------------------------------------
with tab_acts:
    adepth = depth_slider(st, "Depth", 1, table.max_depth, 2, key="gb_act_depth")
    act_rows = activations.tabulate_activations(table, max_depth=adepth)
    act_rows = [r for r in act_rows if r["depth"] > 0]
    if act_rows:
        st.plotly_chart(viz.figure_activation_stats(act_rows), width="stretch")
    else:
        st.info("No layer outputs could be observed for this model format.")
    with state.error_boundary("Reading the weights"):
        wstats = activations.compute_weight_stats(model)
        if wstats:
            st.plotly_chart(viz.figure_weight_norms(wstats), width="stretch")
            pname = st.selectbox("Weight tensor", [s.name for s in wstats], key="gb_weight_name")
            counts, edges = activations.compute_weight_histogram(model, pname)
            st.plotly_chart(viz.figure_weight_histogram(counts, edges, pname), width="stretch")

# -- Layer importance -------------------------------------------------------------
with tab_importance:
    why_not = layer_importance.importance_unavailable_reason(model)
    if why_not:
        st.info(escape_markdown(why_not))
    else:
        c1, c2, c3 = st.columns(3)
        idepth = depth_slider(c1, "Layer depth", 1, table.max_depth, structure.default_depth(table.rows) - 1,
                              key="gb_imp_depth", help="Score the modules at this depth (at first, the repeated blocks).")
        steps = c2.slider("Integration steps", 4, 64, 16, key="gb_imp_steps")
        n_imp = c3.number_input("Inputs", 1, min(len(inputs), 64), min(len(inputs), MAX_IMPORTANCE_INPUTS), key="gb_imp_n")
        key = f"{model.sha256}:{inputs_sha}:{idepth}:{steps}:{int(n_imp)}"
        if st.button("Rank layers", key="gb_imp_run", type="primary") or key in st.session_state.get("gb_imp_jobs", {}):
            with state.error_boundary("Ranking layers"):  # a job of the queue, saved as an importance run
                run = jobs.follow_request("gb_imp_jobs", key, lambda: jobs.submit_importance(
                    model, inputs[: int(n_imp)], idepth, steps), "Attributing to each layer")
                if run is not None:
                    render_importance(saved_importance(run))
        else:
            st.caption("Scores every layer with LayerIntegratedGradients for the predicted class. "
                       "Press **Rank layers** to start.")
        if model.modality == "image":
            with state.error_boundary("Grad-CAM"):
                with hold_model(model):  # observing the layers hooks them
                    cam_layers = layer_importance.grad_cam_layers(model, inputs)
                cam_layer = st.selectbox("Grad-CAM layer", cam_layers, key=f"gb_cam_layer_{model.sha256[:12]}",
                                         format_func=lambda n: f"{n} (default)" if n == cam_layers[0] else n,
                                         help="Layers with a spatial output, smallest maps first; the default is "
                                              "the last spatial stage.")
                shown_n = min(len(inputs), 4)
                with st.spinner("Grad-CAM…"), hold_model(model):  # a hook on the chosen layer
                    cams = layer_importance.compute_grad_cam(model, inputs[:shown_n], cam_layer)
                    preds = model.predict_logits(inputs[:shown_n]).argmax(1)
                for col, i in zip(st.columns(shown_n), range(shown_n)):
                    col.plotly_chart(viz.figure_grad_cam(batch.display[i], cams[i],
                                                         title=f"#{i} · {model.spec.class_name(int(preds[i]))}"),
                                     width="stretch")
                    col.caption(f"Grad-CAM of layer {escape_markdown(cam_layer)}")
