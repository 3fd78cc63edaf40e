// Line charts drawn as inline SVG, sized to their container so text stays at its real size.

import { h } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
const HEIGHT = 150;
const PAD = { top: 10, right: 12, bottom: 22, left: 44 };
/** The time axis spans at least this much. */
const MIN_WINDOW_MS = 60000;
/** Distances between time labels, in ms. */
const TIME_STEPS = [10000, 15000, 30000, 60000, 120000, 300000];

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** A top for the axis at or above `value` whose quarters are round numbers. */
function niceMax(value) {
  if (!(value > 0)) return 1;
  const quarter = value / 4;
  const power = 10 ** Math.floor(Math.log10(quarter));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= quarter) return 4 * step * power;
  }
  return 40 * power;
}

function fmtTick(value) {
  if (value >= 100 || Number.isInteger(value)) return String(Math.round(value));
  return value.toFixed(value < 1 ? 2 : 1);
}

/**
 * A chart element to place in a page; call `.draw(options)` with new data at any time.
 *
 * Options: `series`: `[{ label, values: [{ t, v }] }]` (`v` null leaves a gap); `unit` (shown
 * after values); `max` (fixed top of the axis, else the data's rounded up); `windowMs` (how
 * far back the time axis reaches at most: it starts at the oldest sample, but spans at least
 * a minute); `now` (the right edge, client clock ms); `format(v)`.
 */
export function createChart(title) {
  const svgHolder = h("div", { class: "chart-plot" });
  const legend = h("ul", { class: "chart-legend" });
  const root = h("figure", { class: "chart" }, h("figcaption", {}, title), svgHolder, legend);
  let last = null;

  root.draw = (options) => {
    last = options;
    const { series, unit = "", now = Date.now() } = options;
    const oldest = Math.min(now, ...series.flatMap((line) => line.values.map((p) => p.t)));
    const windowMs = Math.min(options.windowMs, Math.max(MIN_WINDOW_MS, now - oldest));
    const format = options.format || ((v) => `${fmtTick(v)}${unit ? ` ${unit}` : ""}`);
    const width = Math.max(240, Math.floor(svgHolder.clientWidth || root.clientWidth || 480));
    const plotW = width - PAD.left - PAD.right;
    const plotH = HEIGHT - PAD.top - PAD.bottom;
    const start = now - windowMs;

    let dataMax = 0;
    let any = false;
    for (const line of series) {
      for (const p of line.values) {
        if (p.v !== null && p.v !== undefined && p.t >= start) {
          any = true;
          dataMax = Math.max(dataMax, p.v);
        }
      }
    }
    const max = options.max ?? niceMax(dataMax * 1.1);
    const x = (t) => PAD.left + ((t - start) / windowMs) * plotW;
    const y = (v) => PAD.top + plotH - (Math.min(v, max) / max) * plotH;

    const latest = series.map((line) => {
      const values = line.values.filter((p) => p.v !== null && p.v !== undefined);
      return values.length ? values[values.length - 1].v : null;
    });
    const summary = series
      .map((line, i) => `${line.label} ${latest[i] === null ? "no data" : format(latest[i])}`)
      .join(", ");

    const svg = s("svg", {
      viewBox: `0 0 ${width} ${HEIGHT}`,
      width,
      height: HEIGHT,
      role: "img",
      "aria-label": `${title}: ${summary}`,
    });
    for (let i = 0; i <= 4; i += 1) {
      const v = (max * i) / 4;
      const yy = y(v);
      svg.append(s("line", { x1: PAD.left, x2: width - PAD.right, y1: yy, y2: yy, class: i ? "gridline" : "axis" }));
      svg.append(s("text", { x: PAD.left - 6, y: yy + 4, class: "tick", "text-anchor": "end" }, fmtTick(v)));
    }
    // A time label about every 70 px, at a round number of seconds or minutes.
    const wanted = windowMs / Math.max(1, Math.floor(plotW / 70));
    const step = TIME_STEPS.find((t) => t >= wanted) || TIME_STEPS[TIME_STEPS.length - 1];
    for (let back = 0; back <= windowMs + 1; back += step) {
      const xx = x(now - back);
      svg.append(s("line", { x1: xx, x2: xx, y1: PAD.top, y2: PAD.top + plotH, class: "gridline" }));
      const label = back === 0 ? "now" : back % 60000 === 0 ? `−${back / 60000} min` : `−${back / 1000} s`;
      const anchor = back === 0 ? "end" : back + step > windowMs + 1 && xx < PAD.left + 30 ? "start" : "middle";
      svg.append(s("text", { x: xx, y: HEIGHT - 6, class: "tick", "text-anchor": anchor }, label));
    }
    series.forEach((line, i) => {
      let d = "";
      let pen = false;
      for (const p of line.values) {
        if (p.t < start - 5000 || p.v === null || p.v === undefined) {
          pen = false;
          continue;
        }
        d += `${pen ? "L" : "M"}${x(Math.max(p.t, start)).toFixed(1)},${y(p.v).toFixed(1)}`;
        pen = true;
      }
      if (d) svg.append(s("path", { d, class: `line series-${i}` }));
      const points = line.values.filter((p) => p.v !== null && p.v !== undefined && p.t >= start);
      if (points.length) {
        const p = points[points.length - 1];
        svg.append(s("circle", { cx: x(p.t), cy: y(p.v), r: 3, class: `dot series-${i}` }));
      }
    });
    if (!any) {
      svg.append(s("text", { x: PAD.left + plotW / 2, y: PAD.top + plotH / 2, class: "empty", "text-anchor": "middle" }, "waiting for samples…"));
    }
    svgHolder.replaceChildren(svg);

    legend.replaceChildren(...series.map((line, i) => h("li", {},
      h("span", { class: `swatch series-${i}`, "aria-hidden": "true" }),
      `${line.label}: `,
      h("strong", {}, latest[i] === null ? "–" : format(latest[i])))));
  };

  root.redraw = () => {
    if (last) root.draw(last);
  };
  return root;
}
