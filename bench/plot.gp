# bench/plot.gp: docs/benchmarks.png from the data bench/http/report.py
# wrote. usage: gnuplot -e "datadir='DIR'; out='FILE.png'" bench/plot.gp
# Left: process creation cost against the parent's RSS, one line per method
# (log scale: fork at 2 GiB is orders of magnitude above a thread).
# Middle: HTTP req/s per server, keep-alive and new connection per request.
# Right: the server's CPU time per request, the same bars: req/s alone hides
# a server that is fast only because it burns both cores.
# A half whose data this run did not produce says so instead of a plot.
if (!exists("datadir")) datadir = "build/bench/plot"
if (!exists("out")) out = "docs/benchmarks.png"
has(f) = system("test -s '".f."' && echo 1 || echo 0") + 0

set terminal pngcairo size 2100,620 font "DejaVu Sans,10" noenhanced
set output out
set multiplot layout 1,3
# Dark, distinct colours: the default cycle's yellow is unreadable on white.
set linetype 1 lc rgb "#1b62a5" lw 2 pt 7
set linetype 2 lc rgb "#6baed6" lw 2 pt 5
set linetype 3 lc rgb "#c0392b" lw 2 pt 7
set linetype 4 lc rgb "#f1948a" lw 2 pt 5
set linetype 5 lc rgb "#7d3c98" lw 2 pt 9
set linetype 6 lc rgb "#1e8449" lw 2 pt 11
set linetype 7 lc rgb "#7f8c8d" lw 2 pt 13
set linetype cycle 7
set bmargin 7

proc = datadir."/process.dat"
set title "Process creation: cost against the parent's RSS"
if (has(proc)) {
  stats proc using 1 nooutput
  set xlabel "touched memory in the parent (RSS)"
  set ylabel "microseconds per create + wait (log scale)"
  set logscale y
  set format y "%.0f"
  set grid ytics mytics xtics
  set key top left box opaque
  set xrange [-0.3:STATS_max + 0.3]
  plot for [i=0:STATS_blocks-1] proc index i using 1:3:xtic(2) with linespoints title columnheader(1)
} else {
  unset border; unset xtics; unset ytics
  set label 1 "not measured in this run\n(bench_process_creation was not built)" at graph 0.5, graph 0.5 center
  plot [0:1] [0:1] NaN notitle
  unset label 1
  set border; set xtics; set ytics
}

unset logscale y
set format y "%g"
unset xrange
unset xlabel
set grid ytics
http = datadir."/http.dat"
set title "HTTP servers, 2 workers: requests per second (median)"
if (has(http)) {
  set ylabel "requests per second"
  set style data histograms
  set style histogram clustered gap 1
  set style fill solid 0.8 border -1
  set boxwidth 0.9
  set xtics rotate by -25 scale 0
  set yrange [0:*]
  set key outside bottom center horizontal  # never over a bar
  plot http using 2:xtic(1) title "keep-alive (-c64)", \
       "" using 3 title "new connection per request (-c16)"
} else {
  unset border; unset xtics; unset ytics
  set label 1 "no HTTP server measured in this run" at graph 0.5, graph 0.5 center
  plot [0:1] [0:1] NaN notitle
  unset label 1
  set border; set xtics; set ytics
}

set title "HTTP servers, 2 workers: server CPU time per request (median, lower is better)"
if (has(http)) {
  set ylabel "microseconds of server CPU (user + system) per request"
  set datafile missing "-"
  plot http using 4:xtic(1) title "keep-alive (-c64)", \
       "" using 5 title "new connection per request (-c16)"
} else {
  unset border; unset xtics; unset ytics
  set label 1 "no HTTP server measured in this run" at graph 0.5, graph 0.5 center
  plot [0:1] [0:1] NaN notitle
}
unset multiplot
