#!/usr/bin/env bash
# Render docs/report_page1.png: page 1 of the PDF report that `hyperct predict` writes for the
# phantom of `hyperct sample` (seed 0) with the embedded demo model. Needs poppler's pdftoppm.
#
#   bash scripts/make_docs_report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
hyperct sample --out "$work/ct"
hyperct predict "$work/ct" --pdf --saliency --out "$work/report"
pdftoppm -r 110 -png -f 1 -l 1 -singlefile "$work/report/ct.hyperct.pdf" docs/report_page1
echo "docs/report_page1.png"
