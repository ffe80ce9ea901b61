"""The demo report's sparse-coder section: which SAE latents are active where the answer is read,
what they do to the answer, and what they respond to in the corpus."""

from __future__ import annotations

import torch


def demo_section(model, task, report, out, label, summary) -> None:
    from circuitlab.engine.cache import capture
    from circuitlab.sparse.attribution import patch_latents
    from circuitlab.sparse.bundled import find_coder
    from circuitlab.sparse.dashboard import card_figure, card_html, latent_cards

    coder = find_coder(model.name)
    if coder is None:
        report.add(f"{label}: sparse-autoencoder latents (skipped)",
                   f"No sparse autoencoder ships for {model.name}. Train residual-stream SAEs for it with "
                   "`circuitlab train CONFIG.toml` (examples in saes/configs/, with `model = ` set to this "
                   "model) and analyse their latents with `cl.patch(..., sites=\"latents\", coders=[...])`.")
        return
    hook = coder.cfg.hooks_in[0]
    b = torch.arange(len(task))
    with torch.no_grad():
        x = capture(model, task.clean_tokens, [hook])[hook][b, task.answer_pos]
        f = coder.encode(x.to(coder.W_enc.device)).float()
    mean_act = f.mean(0)
    active = mean_act.topk(8).indices.tolist()
    effects = patch_latents(model, task, [coder], method="atp", positions=["END"], units=active)
    rows = [["latent", "mean activation at END", "AtP effect on " + task.metric.name]]
    for i, u in enumerate(active):
        rows.append([u, float(mean_act[u]), float(effects.values.flatten()[i])])
    cards = latent_cards(model, coder, active[:3], n_docs=128)
    report.add(f"{label}: sparse-autoencoder latents at the answer position",
               f"The bundled TopK SAE on {hook} (d_sae {coder.W_enc.shape[1]}): latents most active at the answer "
               "position, their AtP effect on the metric when set to their corrupted values, and the corpus contexts "
               "that activate the top three most (activating token highlighted) with the tokens they promote.",
               rows, *[card_html(c) for c in cards], *[card_figure(c) for c in cards])
    summary["sae_top_latents"] = rows[1:]
