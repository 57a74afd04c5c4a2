//! The interactive terminal client (`echochat`).
