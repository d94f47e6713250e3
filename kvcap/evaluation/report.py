"""The kvcap evaluation report: one self-contained HTML file a person opens to judge a model.

The header holds the overall metrics, the seed's targets with pass/fail, per-category results and warnings
(mode collapse when the unique-caption ratio is below 0.5, captions cut at ``max_new_tokens``, captions that repeat
a word 4-gram, unreadable videos).
Below, one table row per clip: its frames as a strip of small JPEG data URIs, the generated caption, the reference
and the scores. Clicking a column header sorts by it; a category filter and a text search narrow the rows.
Nothing is loaded from elsewhere, and every piece of text is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# Half the captions opening with the same five words is a warning: references to different clips rarely do, and
# the seed's collapsed runs did ("이 영상은 2017년 이후에 촬영된 …").
SHARED_OPENING_SHARE = 0.5


def opens_alike(diversity: dict[str, Any]) -> bool:
    """Whether at least SHARED_OPENING_SHARE of several captions begin with the same five words."""
    share = diversity.get("top_opening_share")  # absent from metrics written before it existed
    return share is not None and share >= SHARED_OPENING_SHARE and diversity["num_captions"] > 1


_CSS = """
body{font-family:system-ui,-apple-system,"Apple SD Gothic Neo","Noto Sans KR",sans-serif;margin:1.5rem;color:#1d1d1f;
background:#fafafa}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
.sub{color:#666;font-size:.85rem;word-break:break-all}
.warn{background:#fdecea;border:1px solid #e0b4b4;color:#8a1f11;padding:.7rem 1rem;border-radius:6px;margin:.8rem 0}
.note{background:#fff8e1;border:1px solid #e8d8a0;padding:.6rem 1rem;border-radius:6px;margin:.8rem 0}
.cards{display:flex;gap:.8rem;flex-wrap:wrap}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:.6rem .9rem;min-width:11rem}
.card .v{font-size:1.5rem;font-weight:600}.card .t{color:#666;font-size:.8rem}
.pass{color:#1b7f3b;font-weight:600}.fail{color:#b3261e;font-weight:600}.na{color:#888}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ddd;padding:.3rem .45rem;vertical-align:top;font-size:.85rem}
th{background:#f0f0f0;text-align:left}
th[data-sort]{cursor:pointer;user-select:none}th[data-sort]:hover{background:#e4e4e4}
th[data-dir=asc]::after{content:" ▲"}th[data-dir=desc]::after{content:" ▼"}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.text{min-width:12rem;white-space:pre-wrap;word-break:keep-all;overflow-wrap:anywhere}
#clips{width:100%}
.strip{display:grid;grid-template-columns:repeat(4,max-content);gap:2px}.strip img{display:block;border-radius:2px}
.facts{margin-top:.35rem;display:flex;flex-wrap:wrap;gap:.2rem;white-space:normal}
.fact{font-size:.72rem;padding:0 .3rem;border-radius:4px}.fact.hit{background:#e6f4ea;color:#1b5e20}
.fact.miss{background:#f1f1f1;color:#777;text-decoration:line-through}
.fact.wrong{background:#fdecea;color:#8a1f11;font-weight:600}
.badge{display:inline-block;font-size:.72rem;padding:0 .35rem;border-radius:4px;margin-right:.3rem;
background:#eee;color:#333}.badge.dup{background:#fdecea;color:#8a1f11}.badge.cut{background:#fff3cd;color:#6b4e00}
.controls{margin:.6rem 0;display:flex;gap:.8rem;align-items:center;font-size:.85rem}
.scroll{overflow-x:auto}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.78rem}
"""

_JS = """
(function(){
  const table=document.getElementById('clips');
  const body=table.tBodies[0];
  table.querySelectorAll('th[data-sort]').forEach(th=>th.addEventListener('click',()=>{
    const idx=[...th.parentNode.children].indexOf(th);
    const numeric=th.dataset.sort==='num';
    const dir=th.dataset.dir==='desc'?'asc':(th.dataset.dir==='asc'?'desc':(numeric?'desc':'asc'));
    table.querySelectorAll('th').forEach(h=>h.removeAttribute('data-dir'));
    th.dataset.dir=dir;
    const key=r=>{const v=r.cells[idx].dataset.value;return numeric?(v===''||v===undefined?NaN:parseFloat(v)):(v||'');};
    const rows=[...body.rows];
    rows.sort((a,b)=>{
      const x=key(a),y=key(b);
      if(numeric){if(isNaN(x)&&isNaN(y))return 0;if(isNaN(x))return 1;if(isNaN(y))return -1;return dir==='asc'?x-y:y-x;}
      return dir==='asc'?x.localeCompare(y):y.localeCompare(x);
    });
    rows.forEach(r=>body.appendChild(r));
  }));
  const cat=document.getElementById('category');const q=document.getElementById('search');
  function filter(){
    const c=cat.value,s=q.value.trim().toLowerCase();let shown=0;
    [...body.rows].forEach(r=>{
      const ok=(!c||r.dataset.category===c)&&(!s||r.textContent.toLowerCase().includes(s));
      r.hidden=!ok;shown+=ok;
    });
    document.getElementById('shown').textContent=shown;
  }
  cat.addEventListener('change',filter);q.addEventListener('input',filter);
})();
"""

# Per-clip score columns: (key in the clip's scores, header, digits).
_SCORE_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("meteor", "METEOR", 3),
    ("siglip_score", "SigLIP", 3),
    ("siglip_cosine", "SigLIP cos", 3),
    ("attribute_recall", "attr. recall", 2),
)


def frames_to_data_uris(frames: np.ndarray | Sequence[np.ndarray], height: int = 60, quality: int = 75) -> list[str]:
    """Each ``(H, W, 3)`` uint8 frame as a small JPEG ``data:`` URI, ``height`` pixels high, aspect kept."""
    uris = []
    for frame in frames:
        image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
        width = max(1, round(image.width * height / image.height))
        buffer = io.BytesIO()
        image.resize((width, height), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=quality)
        uris.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return uris


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def _verdict(passed: bool | None) -> str:
    if passed is None:
        return '<span class="na">not computed</span>'
    return '<span class="pass">PASS</span>' if passed else '<span class="fail">FAIL</span>'


def _target_cards(metrics: dict[str, Any]) -> str:
    labels = {"meteor": "METEOR", "siglip_score": "SigLIP2", "diversity": "Diversity (unique ratio)"}
    overall = metrics["overall"]
    floors = {"meteor": overall.get("meteor_floor"), "siglip_score": overall.get("siglip_floor")}
    cards = []
    for name, target in metrics["targets"].items():
        floor = floors.get(name)
        extra = f"<div class='t'>floor {_fmt(floor)}</div>" if floor is not None else ""
        # A skipped metric's full reason is in the notes above the cards; the card only says why it is missing.
        if target.get("note") and target["value"] is None:
            note = "<div class='t'>skipped</div>"
        elif target.get("note"):
            note = f"<div class='t'>{escape(target['note'])}</div>"
        else:
            note = ""
        cards.append(
            f"<div class='card'><div class='t'>{escape(labels.get(name, name))}</div>"
            f"<div class='v'>{_fmt(target['value'])}</div>"
            f"<div class='t'>target &gt; {target['target']:.2f} · {_verdict(target['passed'])}</div>{extra}{note}</div>"
        )
    return "<div class='cards'>" + "".join(cards) + "</div>"


def _summary_row(name: str, summary: dict[str, Any]) -> str:
    div = summary["diversity"]
    recall = summary.get("attribute_recall", {}).get("all")
    cells = [
        escape(name),
        str(summary["num_clips"]),
        _fmt(summary.get("meteor")),
        _fmt(summary.get("meteor_floor")),
        _fmt(summary.get("siglip_score")),
        _fmt(div["unique_ratio"], 3) + f" ({div['num_unique']}/{div['num_captions']})",
        _fmt(div["distinct_1"], 3),
        _fmt(div["distinct_2"], 3),
        _fmt(div["self_bleu_4"], 3),
        str(div["vocab_size"]),
        _fmt(recall, 3),
        _fmt(summary.get("prediction_chars"), 0) + " / " + _fmt(summary.get("reference_chars"), 0),
    ]
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _summary_table(metrics: dict[str, Any]) -> str:
    head = [
        "",
        "clips",
        "METEOR",
        "METEOR floor",
        "SigLIP",
        "unique ratio",
        "distinct-1",
        "distinct-2",
        "self-BLEU-4",
        "vocab",
        "attr. recall",
        "chars pred / ref",
    ]
    rows = [_summary_row("all", metrics["overall"])]
    rows += [_summary_row(name, summary) for name, summary in metrics.get("per_category", {}).items()]
    return (
        "<table><thead><tr>"
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _warnings(metrics: dict[str, Any], clips: Sequence[dict[str, Any]]) -> str:
    parts = []
    overall = metrics["overall"]
    div = overall["diversity"]
    if div["collapsed"]:
        common = Counter(" ".join((c["prediction"] or "").split()) for c in clips).most_common(3)
        items = "".join(f"<li>×{count}: {escape(text[:300])}</li>" for text, count in common)
        parts.append(
            "<div class='warn'><b>Mode collapse:</b> "
            f"{div['num_unique']} unique captions for {div['num_captions']} clips (unique ratio "
            f"{div['unique_ratio']:.3f} &lt; {div['collapse_threshold']}); the most frequent caption is written for "
            f"{100 * div['top_share']:.0f}% of the clips.<ul>{items}</ul></div>"
        )
    if opens_alike(div):
        parts.append(
            f"<div class='warn'><b>Shared opening:</b> {100 * div['top_opening_share']:.0f}% of the captions begin "
            f"&ldquo;{escape(div['top_opening'])}&rdquo;: the language model's prior writes it, not the video.</div>"
        )
    truncated = overall.get("cut_at_max_new_tokens")
    if truncated:
        limit = (metrics.get("generation") or {}).get("max_new_tokens")
        where = f"max_new_tokens={limit}" if limit is not None else "the token limit"
        parts.append(
            f"<div class='note'>{100 * truncated:.1f}% of the captions stopped at {escape(where)} without an "
            "end-of-turn token (cut short, or looping).</div>"
        )
    repeating = div.get("num_repeating_4gram")
    if repeating:
        parts.append(
            f"<div class='note'>{repeating} of {div['num_captions']} captions repeat a word 4-gram (looping); the most "
            f"repeated one occurs {div['max_4gram_repeats']} times in one caption.</div>"
        )
    siglip = metrics.get("siglip") or {}
    if siglip.get("skipped"):
        parts.append(f"<div class='note'>{escape(siglip.get('note', 'SigLIP scoring skipped'))}</div>")
    unreadable = metrics.get("unreadable_videos") or []
    if unreadable:
        items = "".join(
            f"<li><span class='mono'>{escape(str(u.get('video_path')))}</span>: {escape(str(u.get('error')))}</li>"
            for u in unreadable
        )
        parts.append(
            f"<div class='warn'><b>{len(unreadable)} unreadable video(s)</b> (not captioned):<ul>{items}</ul></div>"
        )
    not_read = metrics.get("videos_not_read") or []
    if not_read:
        parts.append(
            f"<div class='note'>{len(not_read)} captioned clip(s) whose video could not be read again: scored, "
            f"without frames or SigLIP (e.g. <span class='mono'>{escape(str(not_read[0].get('video_path')))}</span>: "
            f"{escape(str(not_read[0].get('error')))}; all in metrics.json).</div>"
        )
    scan = metrics.get("dataset_scan") or {}
    skipped = {reason: n for reason, n in (scan.get("skipped") or {}).items() if n}
    if skipped:
        listed = ", ".join(f"{escape(reason)} {n}" for reason, n in skipped.items())
        parts.append(f"<div class='note'>The corpus scan skipped files: {listed} (paths in metrics.json).</div>")
    archives = scan.get("archives") or []
    if archives:
        parts.append(
            f"<div class='warn'><b>{len(archives)} archive(s) not extracted</b> next to the data (e.g. "
            f"<span class='mono'>{escape(archives[0])}</span>): their clips are not in this evaluation.</div>"
        )
    return "".join(parts)


_FACTS_LEGEND = (
    "<div class='sub'>Under each caption, the clip's labelled facts: <span class='fact hit'>✓ stated</span> "
    "<span class='fact miss'>not stated</span> <span class='fact wrong'>✗ stated, not in the clip</span></div>"
)


def _facts(facts: Sequence[dict[str, Any]] | None) -> str:
    """The clip's labelled facts under its caption: stated (✓), not stated (struck out), stated but wrong (✗)."""
    if not facts:
        return ""
    marks = []
    for fact in facts:
        if fact["kind"] == "wrong_object":
            css, title, text = "wrong", "stated, not in the clip", f"✗ {fact['named']}"
        elif fact["named"]:
            css, title, text = "hit", f"{fact['kind']}: stated", f"✓ {fact['expected']}"
        else:
            css, title, text = "miss", f"{fact['kind']}: not stated", fact["expected"]
        marks.append(f"<span class='fact {css}' title='{escape(title, quote=True)}'>{escape(text)}</span>")
    return "<div class='facts'>" + "".join(marks) + "</div>"


def _clip_row(index: int, clip: dict[str, Any], columns: Sequence[tuple[str, str, int]], frame_height: int) -> str:
    scores = clip.get("scores") or {}
    category = clip.get("category") or "(none)"
    frames = "".join(
        # A fixed height lays the strip out before the images decode, so rows do not jump while the page loads.
        f"<img src='{uri}' alt='frame {i + 1}' height='{frame_height}'>"
        for i, uri in enumerate(clip["frames"])
    )
    missing = clip.get("error") or clip.get("video_error") or "no frames"
    strip = f"<div class='strip'>{frames}</div>" if frames else f"<i>{escape(missing)}</i>"
    badges = ""
    same = scores.get("same_caption_count", 1)
    if same and same > 1:
        badges += f"<span class='badge dup'>same caption ×{same}</span>"
    if clip.get("finished") is False:
        badges += "<span class='badge cut'>cut at max_new_tokens</span>"
    repeated = scores.get("repeated_4grams")
    if repeated:
        badges += f"<span class='badge cut'>{repeated} repeated 4-gram{'s' if repeated > 1 else ''}</span>"
    cells = [
        f"<td class='num' data-value='{index}'>{index}</td>",
        f"<td data-value='{escape(clip['video_id'], quote=True)}'><span class='mono'>{escape(clip['video_id'])}</span>"
        f"<br>{escape(category)}</td>",
        f"<td>{strip}</td>",
        f"<td class='text' data-value='{escape(clip.get('prediction') or '', quote=True)}'>{badges}"
        f"<span class='prediction'>{escape(clip.get('prediction') or '')}</span>{_facts(scores.get('attribute_facts'))}"
        "</td>",
        f"<td class='text' data-value='{escape(clip.get('reference') or '', quote=True)}'>"
        f"<span class='reference'>{escape(clip.get('reference') or '')}</span></td>",
    ]
    for key, _, digits in columns:
        value = scores.get(key)
        shown = "" if value is None else f"{value:.{digits}f}"
        cells.append(f"<td class='num' data-value='{'' if value is None else value}'>{shown}</td>")
    tokens = "" if clip.get("num_tokens") is None else str(clip["num_tokens"])
    cells.append(f"<td class='num' data-value='{tokens}'>{tokens}</td>")
    cells.append(f"<td class='num' data-value='{same}'>{same}</td>")
    return f"<tr class='clip' data-category='{escape(category, quote=True)}'>" + "".join(cells) + "</tr>"


def render_report(
    metrics: dict[str, Any], clips: Sequence[dict[str, Any]], title: str = "kvcap evaluation", frame_height: int = 60
) -> str:
    """The report as one HTML string.

    Args:
        metrics: what ``eval_hf.py`` writes to ``metrics.json`` (``overall``, ``per_category``, ``targets``, ...).
        clips: per clip ``video_id``, ``category``, ``prediction``, ``reference``, ``scores`` (dict),
            ``num_tokens``, ``finished``, ``error`` and ``frames`` (data URIs, see :func:`frames_to_data_uris`).
        title: page title.
        frame_height: displayed height of each thumbnail in pixels.
    """
    columns = [c for c in _SCORE_COLUMNS if any((clip.get("scores") or {}).get(c[0]) is not None for clip in clips)]
    source = metrics.get("source") or {}
    described = " · ".join(f"{escape(k)}: {escape(str(v))}" for k, v in source.items() if v is not None)
    generation = metrics.get("generation") or {}
    gen_keys = ("max_new_tokens", "repetition_penalty", "do_sample", "num_beams", "batch_size", "captions_per_second")
    gen_text = " · ".join(f"{k}={escape(str(generation[k]))}" for k in gen_keys if k in generation)
    categories = sorted({clip.get("category") or "(none)" for clip in clips})
    options = "".join(f"<option value='{escape(c, quote=True)}'>{escape(c)}</option>" for c in categories)
    head = (
        "<tr><th data-sort='num'>#</th><th data-sort='text'>clip</th><th>frames</th>"
        "<th data-sort='text'>generated caption</th><th data-sort='text'>reference</th>"
        + "".join(f"<th data-sort='num'>{escape(label)}</th>" for _, label, _ in columns)
        + "<th data-sort='num'>tokens</th><th data-sort='num'>same caption</th></tr>"
    )
    rows = "".join(_clip_row(i, clip, columns, frame_height) for i, clip in enumerate(clips, 1))
    return (
        "<!DOCTYPE html>\n<html lang='ko'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1><div class='sub'>{described}</div>"
        + (f"<div class='sub'>{gen_text}</div>" if gen_text else "")
        + _warnings(metrics, clips)
        + "<h2>Seed targets</h2>"
        + _target_cards(metrics)
        + "<h2>Metrics</h2>"
        + _summary_table(metrics)
        + "<h2>Clips</h2>"
        + (_FACTS_LEGEND if any((clip.get("scores") or {}).get("attribute_facts") for clip in clips) else "")
        + "<div class='controls'><label>category <select id='category'><option value=''>all</option>"
        + options
        + "</select></label><label>search <input id='search' type='search'></label>"
        + f"<span><span id='shown'>{len(clips)}</span> of {len(clips)} shown · click a header to sort</span></div>"
        + f"<div class='scroll'><table id='clips'><thead>{head}</thead><tbody>{rows}</tbody></table></div>"
        + f"<script>{_JS}</script></body></html>\n"
    )


def write_report(
    path: str | Path,
    metrics: dict[str, Any],
    clips: Sequence[dict[str, Any]],
    title: str = "kvcap evaluation",
    frame_height: int = 60,
) -> Path:
    """Write :func:`render_report` to ``path`` (UTF-8) and return the path."""
    path = Path(path)
    path.write_text(render_report(metrics, clips, title, frame_height), encoding="utf-8")
    return path
