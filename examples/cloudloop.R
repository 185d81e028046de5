# cloudloop's line protocol for R: one R process serves many rows of a command job.
#
#   source("cloudloop.R")
#   cloudloop_serve(function(row, msg) { ... ; list(estimate = 1.5) })
#
# run with `cloudloop run --serve --items rows.csv -- Rscript my_script.R` (or
# ex.command_job("Rscript my_script.R", rows, serve=True)). cloudloop writes one
# JSON line per row on stdin: {"row": {...}, "index": 0, "row_number": 1,
# "seed": ..., "output": "/dir/for/this/row's/files"}. The function gets the row
# (a list of its fields, as strings from a CSV) and the whole message; what it
# returns is the row's result, as JSON ({"value": ...} on one line of stdout). An
# R error fails that row only ({"error": "..."}): the process goes on with the
# next. While the function runs, what R prints goes to stderr, i.e. the row's log.
# Needs the jsonlite package (Debian: r-cran-jsonlite).
cloudloop_serve <- function(f) {
  input <- file("stdin", open = "r")
  on.exit(close(input))
  out <- stdout()
  while (length(line <- readLines(input, n = 1L, warn = FALSE)) > 0L) {
    msg <- jsonlite::fromJSON(line, simplifyVector = FALSE)
    sink(stderr())  # print() inside f: the row's log, not an answer
    answer <- tryCatch(
      list(value = f(msg$row, msg)),
      error = function(e) list(error = conditionMessage(e))
    )
    sink()
    writeLines(jsonlite::toJSON(answer, auto_unbox = TRUE, null = "null", digits = NA), out)
    flush(out)
  }
}
