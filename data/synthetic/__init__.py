"""ShapeWorld: a synthetic subject-driven world (coloured shapes on backgrounds), see docs/shapeworld.md."""
