# Leave-one-out random forests on R's airquality data (the 111 complete rows):
# fold i fits randomForest(Ozone ~ .) on every row but i and predicts row i.
#   Rscript loo_rf.R I SEED       one fold, a process per row: prints its JSON result
#   Rscript loo_rf.R --serve      serves folds on stdin (cloudloop's line protocol)
suppressMessages(library(randomForest))
data <- airquality[complete.cases(airquality), ]

fold <- function(i, seed) {
  set.seed(seed %% .Machine$integer.max)
  fit <- randomForest(Ozone ~ ., data = data[-i, ], ntree = 300)
  list(i = i, observed = data$Ozone[i], predicted = unname(predict(fit, data[i, ])))
}

args <- commandArgs(trailingOnly = TRUE)
if (length(args) && args[1] == "--serve") {
  source("cloudloop.R")
  cloudloop_serve(function(row, msg) fold(as.integer(row$i), msg$seed))
} else {
  cat(jsonlite::toJSON(fold(as.integer(args[1]), as.numeric(args[2])), auto_unbox = TRUE, digits = NA), "\n")
}
