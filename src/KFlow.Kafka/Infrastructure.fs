// Small internal shims shared by the runtime's files; nothing here is public.
[<AutoOpen>]
module internal KFlow.Kafka.Infrastructure

/// Raises ArgumentException naming the setting, with a sentence that says what to do.
let invalidSetting (name: string) (message: string) =
    raise (System.ArgumentException(message, name))
