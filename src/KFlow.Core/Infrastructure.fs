// Small internal shims shared by the core's files. Nothing here is public: the core's public
// surface is the concepts named by the other files (Offset, Ledger, Stage, Pipe, TestDriver).
[<AutoOpen>]
module internal KFlow.Infrastructure

/// Raises ArgumentException naming the argument, with a sentence that says what to do.
let invalidArgWith (name: string) (message: string) =
    raise (System.ArgumentException(message, name))

/// Runs f, catching what it throws as an Error (stages, key functions, writes and async calls are
/// user code: a throw is reported, never let through the interpreter).
let attempt (f: unit -> 'b) : Result<'b, exn> =
    try
        Ok(f ())
    with ex ->
        Error ex
