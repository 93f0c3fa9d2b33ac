// A small SVG writer for the ratio chart (no dependencies): one row per headline metric, a bar per
// baseline with a min–max whisker, a line at 1.0 and the target as a tick.

const SHOWN = new Set(['reqPerSec', 'p99Ms', 'cpuUsPerReq', 'deliveriesPerSec', 'cpuUsPerDelivery', 'heapPerConn', 'allReceivedMs'])
const SERIES = [['bare', '#3b6fb6', 'vs bare @fastify/websocket'], ['socketio', '#e08a2c', 'vs Socket.IO 4'], ['nes', '#6aa84f', 'vs @hapi/nes']]

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

export function svgChart ({ lines, targets }, { title }) {
  const rows = lines.filter(l => SHOWN.has(l.field) && Object.keys(l.ratios).length > 0)
  // Ratios are multiplicative: a log2 axis puts 0.5× and 2× at the same distance from 1×.
  const all = rows.flatMap(l => Object.values(l.ratios).flatMap(r => [r.min, r.max])).filter(v => v > 0)
  const lo = 2 ** Math.max(-4, Math.min(-1, Math.floor(Math.log2(Math.min(...all)))))
  const hi = 2 ** Math.min(4, Math.max(1, Math.ceil(Math.log2(Math.max(...all)))))
  const left = 330
  const width = 900
  const plot = width - left - 30
  const barH = 9
  const rowH = SERIES.length * (barH + 2) + 12
  const top = 70
  const height = top + rows.length * rowH + 40
  const x = (v) => left + (Math.log2(Math.min(hi, Math.max(lo, v))) - Math.log2(lo)) / (Math.log2(hi) - Math.log2(lo)) * plot
  const out = []
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`)
  out.push(`<rect width="${width}" height="${height}" fill="#fff"/>`)
  out.push(`<text x="10" y="18" font-size="13" font-weight="bold">${esc(title)}</text>`)
  out.push('<text x="10" y="34" fill="#555">ratio fastify-drizzle ÷ baseline, log scale (bar: median, whisker: min–max over repetitions); rates: right is better; latency, CPU, memory: left is better; red ticks: targets</text>')
  SERIES.forEach(([, color, label], i) => {
    out.push(`<rect x="${left + i * 180}" y="44" width="10" height="10" fill="${color}"/><text x="${left + i * 180 + 14}" y="53">${esc(label)}</text>`)
  })
  for (let v = lo; v <= hi * 1.001; v *= 2) {
    out.push(`<line x1="${x(v)}" y1="${top - 4}" x2="${x(v)}" y2="${height - 30}" stroke="${v === 1 ? '#000' : '#e4e4e4'}" stroke-width="${v === 1 ? 1.2 : 1}"${v === 1 ? ' stroke-dasharray="4 3"' : ''}/>`)
    out.push(`<text x="${x(v)}" y="${height - 16}" text-anchor="middle" fill="#555">${v >= 1 ? v : '1/' + 1 / v}×</text>`)
  }
  rows.forEach((l, r) => {
    const y0 = top + r * rowH
    out.push(`<text x="${left - 8}" y="${y0 + rowH / 2}" text-anchor="end">${esc(l.scenario + ': ' + l.label)}</text>`)
    SERIES.forEach(([impl, color], i) => {
      const ratio = l.ratios[impl]
      if (ratio === undefined) return
      const y = y0 + i * (barH + 2)
      const x0 = Math.min(x(1), x(ratio.median))
      out.push(`<rect x="${x0}" y="${y}" width="${Math.max(1, Math.abs(x(ratio.median) - x(1)))}" height="${barH}" fill="${color}"><title>${esc(`${l.scenario} ${l.label} drizzle/${impl}: ${ratio.text}`)}</title></rect>`)
      out.push(`<line x1="${x(ratio.min)}" y1="${y + barH / 2}" x2="${x(ratio.max)}" y2="${y + barH / 2}" stroke="#222"/>`)
      out.push(`<text x="${Math.min(x(ratio.max), left + plot - 30) + 4}" y="${y + barH - 1}" font-size="9" fill="#333">${ratio.median.toFixed(2)}</text>`)
      const t = targets.find(t => t.scenario === l.scenario && t.field === l.field && t.other === impl)
      if (t !== undefined) out.push(`<line x1="${x(t.bound)}" y1="${y - 1}" x2="${x(t.bound)}" y2="${y + barH + 1}" stroke="#c00" stroke-width="2"/>`)
    })
  })
  out.push('</svg>')
  return out.join('\n') + '\n'
}
