"""Core ML: conversion with coremltools, op and precision checks, the detector's NMS pipeline, and an ONNX Runtime emulation of the mlpackage for hosts that are not macOS."""
