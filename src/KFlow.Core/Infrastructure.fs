// Small internal shims shared by the core's files. Nothing here is public: the core's public
// surface is the concepts named by the other files (Offset, Ledger, Stage, Pipe, TestDriver).
[<AutoOpen>]
module internal KFlow.Infrastructure

/// Raises ArgumentException naming the argument, with a sentence that says what to do.
let invalidArgWith (name: string) (message: string) =
    raise (System.ArgumentException(message, name))
