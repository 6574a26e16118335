// The dashboard's only script: it draws the charts whose data each page embeds
// (the #charts JSON, built in pages.py) and keeps the Now page's feed live.
"use strict";

const COLORS = ["#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e", "#9498a0"];
const FEED_ROWS = 200;

function drawCharts() {
  const source = document.getElementById("charts");
  if (!source) return;
  const charts = JSON.parse(source.textContent);
  for (const canvas of document.querySelectorAll("canvas[data-chart]")) {
    const spec = charts[canvas.dataset.chart];
    if (!spec) continue;
    const scales = {
      x: { stacked: spec.stacked },
      y: { stacked: spec.stacked, beginAtZero: true, title: { display: spec.money_axis, text: "tokens" } },
    };
    if (spec.money_axis) {
      scales.money = { position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: "USD" } };
    }
    new Chart(canvas, {
      type: spec.kind,
      data: {
        labels: spec.labels,
        datasets: spec.datasets.map((dataset, index) => ({
          label: dataset.label,
          data: dataset.data,
          text: dataset.text,
          type: dataset.type,
          yAxisID: dataset.axis === "money" ? "money" : "y",
          backgroundColor: COLORS[index % COLORS.length],
          borderColor: COLORS[index % COLORS.length],
          borderDash: dataset.label.startsWith("Target") ? [6, 4] : [],
        })),
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        scales,
        // A dataset may carry its values as the server writes them (costs: pages.py, money.usd).
        plugins: { tooltip: { callbacks: { label: (item) => `${item.dataset.label}: ${item.dataset.text?.[item.dataIndex] ?? item.formattedValue}` } } },
      },
    });
  }
}

function followFeed() {
  const table = document.getElementById("feed");
  if (!table) return;
  const state = document.getElementById("feed-state");
  const feed = new EventSource("/feed?after=" + encodeURIComponent(table.dataset.after));
  feed.addEventListener("call", (event) => {
    // The row comes rendered (and escaped) by the server's own template.
    const message = JSON.parse(event.data);
    document.getElementById("call-" + message.call.interaction_id)?.remove();
    const rows = table.tBodies[0];
    rows.insertAdjacentHTML("afterbegin", message.html);
    while (rows.rows.length > FEED_ROWS) rows.deleteRow(-1);
  });
  feed.addEventListener("open", () => {
    state.textContent = "live";
    state.className = "live";
  });
  feed.addEventListener("error", () => {
    state.textContent = "reconnecting";
    state.className = "stale";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  drawCharts();
  followFeed();
});
