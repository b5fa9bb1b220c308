"""The pymilter adapter and the daemon. (This package is postwarden.milter; the top-level
import name `milter` belongs to pymilter's C module.)"""
