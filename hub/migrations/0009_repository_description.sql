-- The Sendense GUI's repository form has a description; it is the operator's words, kept as given.
ALTER TABLE repositories ADD COLUMN description TEXT;
