/** Line charts as standalone SVG text, for the plots of `docs/paper.md`. */

/** One line of a chart: its legend label and its points in data units. */
export interface ChartSeries {
  label: string;
  points: [number, number][];
}

/** Options of {@linkcode lineChart}. */
export interface LineChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  /** Use a base-10 logarithmic axis (every value must be > 0). */
  xLog?: boolean;
  yLog?: boolean;
  /** Fixed axis range in data units; the default spans the data. */
  yRange?: [number, number];
  series: ChartSeries[];
}

const WIDTH = 840;
const HEIGHT = 440;
const MARGIN = { left: 70, right: 270, top: 40, bottom: 55 };
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

function escapeXml(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
}

/** Tick values for an axis: powers of ten on a log axis, about six round steps otherwise. */
function ticks(min: number, max: number, log: boolean): number[] {
  if (log) {
    const values: number[] = [];
    for (let power = Math.floor(Math.log10(min)); power <= Math.ceil(Math.log10(max)); power++) {
      for (const factor of [1, 2, 5]) {
        const value = factor * 10 ** power;
        if (value >= min && value <= max) values.push(value);
      }
    }
    return values;
  }
  const raw = (max - min) / 6;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * magnitude).find((s) => s >= raw)!;
  const values: number[] = [];
  for (let value = Math.ceil(min / step) * step; value <= max + step * 1e-9; value += step) values.push(value);
  return values;
}

function formatTick(value: number): string {
  if (value >= 1e6) return `${value / 1e6}M`;
  if (value >= 1e3) return `${value / 1e3}k`;
  return String(Number(value.toPrecision(4)));
}

/** Render a line chart with axes, ticks, grid and a legend on the right. */
export function lineChart(options: LineChartOptions): string {
  const all = options.series.flatMap((series) => series.points);
  const xs = all.map(([x]) => x);
  const ys = all.map(([, y]) => y);
  const [xMin, xMax] = [Math.min(...xs), Math.max(...xs)];
  const [yMin, yMax] = options.yRange ?? [Math.min(...ys), Math.max(...ys)];
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const scale = (value: number, min: number, max: number, log: boolean | undefined) =>
    log ? (Math.log10(value) - Math.log10(min)) / (Math.log10(max) - Math.log10(min)) : (value - min) / (max - min || 1);
  const px = (x: number) => MARGIN.left + scale(x, xMin, xMax, options.xLog) * plotWidth;
  const py = (y: number) => MARGIN.top + (1 - scale(Math.min(Math.max(y, yMin), yMax), yMin, yMax, options.yLog)) * plotHeight;

  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="12">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    `<text x="${MARGIN.left + plotWidth / 2}" y="22" text-anchor="middle" font-size="15">${escapeXml(options.title)}</text>`,
  ];

  for (const value of ticks(xMin, xMax, Boolean(options.xLog))) {
    const x = px(value).toFixed(1);
    parts.push(`<line x1="${x}" x2="${x}" y1="${MARGIN.top}" y2="${MARGIN.top + plotHeight}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${x}" y="${MARGIN.top + plotHeight + 16}" text-anchor="middle">${formatTick(value)}</text>`);
  }
  for (const value of ticks(yMin, yMax, Boolean(options.yLog))) {
    const y = py(value).toFixed(1);
    parts.push(`<line x1="${MARGIN.left}" x2="${MARGIN.left + plotWidth}" y1="${y}" y2="${y}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${MARGIN.left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${formatTick(value)}</text>`);
  }
  parts.push(`<rect x="${MARGIN.left}" y="${MARGIN.top}" width="${plotWidth}" height="${plotHeight}" fill="none" stroke="#333"/>`);
  parts.push(
    `<text x="${MARGIN.left + plotWidth / 2}" y="${HEIGHT - 14}" text-anchor="middle">${escapeXml(options.xLabel)}</text>`,
  );
  parts.push(
    `<text transform="translate(18 ${MARGIN.top + plotHeight / 2}) rotate(-90)" text-anchor="middle">${escapeXml(options.yLabel)}</text>`,
  );

  options.series.forEach((series, i) => {
    const color = COLORS[i % COLORS.length];
    const path = series.points.map(([x, y], j) => `${j === 0 ? "M" : "L"}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join("");
    parts.push(`<path d="${path}" fill="none" stroke="${color}" stroke-width="1.6"/>`);
    if (series.points.length <= 12) {
      for (const [x, y] of series.points) {
        parts.push(`<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="3" fill="${color}"/>`);
      }
    }
    const legendY = MARGIN.top + 10 + i * 20;
    const legendX = MARGIN.left + plotWidth + 12;
    parts.push(`<line x1="${legendX}" x2="${legendX + 22}" y1="${legendY}" y2="${legendY}" stroke="${color}" stroke-width="2.5"/>`);
    parts.push(`<text x="${legendX + 28}" y="${legendY}" dominant-baseline="middle">${escapeXml(series.label)}</text>`);
  });

  parts.push("</svg>");
  return parts.join("\n") + "\n";
}
