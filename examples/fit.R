# One task of examples/r_command.py: simulate y = 2 + 3x + noise, fit a line, save the results.
#   Rscript fit.R N NOISE SEED OUTDIR
args <- commandArgs(trailingOnly = TRUE)
n <- as.integer(args[1])
noise <- as.numeric(args[2])
seed <- as.numeric(args[3]) %% .Machine$integer.max  # cloudloop's task seed, into R's range
out <- args[4]

set.seed(seed)
x <- runif(n, 0, 10)
y <- 2 + 3 * x + rnorm(n, sd = noise)
fit <- lm(y ~ x)
ci <- confint(fit)

coefs <- data.frame(
  term = c("intercept", "slope"), truth = c(2, 3),
  estimate = unname(coef(fit)), lower = ci[, 1], upper = ci[, 2], n = n, noise = noise
)
write.csv(coefs, file.path(out, "coefficients.csv"), row.names = FALSE)

pdf(file.path(out, "fit.pdf"), width = 5, height = 4)
plot(x, y, pch = 20, col = "grey40", main = sprintf("n = %d, noise sd = %g", n, noise))
abline(fit, col = "red", lwd = 2)
abline(2, 3, col = "blue", lty = 2)
invisible(dev.off())

cat(sprintf("n=%d noise=%g slope=%.4f [%.4f, %.4f]\n", n, noise, coef(fit)[2], ci[2, 1], ci[2, 2]))
