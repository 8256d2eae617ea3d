// Small internal shims shared by the runtime's files; nothing here is public.
[<AutoOpen>]
module internal KFlow.Kafka.Infrastructure

/// Raises ArgumentException naming the setting, with a sentence that says what to do.
let invalidSetting (name: string) (message: string) =
    raise (System.ArgumentException(message, name))

/// The exception a faulted or cancelled task ended with (the inner one when there is just one).
let taskError (t: System.Threading.Tasks.Task) : exn =
    match t.Exception with
    | null -> System.Threading.Tasks.TaskCanceledException(t) :> exn
    | agg when agg.InnerExceptions.Count = 1 -> agg.InnerExceptions[0]
    | agg -> agg :> exn
